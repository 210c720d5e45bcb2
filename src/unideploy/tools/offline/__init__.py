"""Three-stage offline mode: ``preprocess`` -> tensor files, ``infer`` -> output files, ``postprocess`` -> results.

The stages exchange plain files, so each can run on a different machine (an air-gapped NPU box runs only
``infer``). Folder conventions follow Huawei's ais_bench:

* ``preprocess`` writes one tensor file per image (``<stem>.npy`` or raw ``<stem>.bin``, batch axis of 1)
  and ``manifest.json``: for every tensor its source file, original size, letterbox mapping, dtype and shape,
  plus the model spec the tensors were made for.
* ``infer`` reads one folder per model input (files matched by stem across folders), runs any backend and
  writes ``<stem>_<output index>.<npy|bin|txt>`` into a date-time subfolder of ``--output`` (or
  ``--output-dirname``), plus ``outputs.json`` (names, dtypes, shapes of every output file).
* ``postprocess`` turns output files back into detections with the model family's adapter and the manifest,
  and saves them with the same sinks as ``predict`` (COCO JSON, YOLO txt, annotated images).

Raw ``.bin`` files carry no header: their dtype and shape come from the model's declared inputs, the
manifest written by ``preprocess`` beside them, or ``outputs.json`` for outputs. A file whose byte count does
not match is refused with an error naming it.

Example:
    >>> from unideploy.tools import offline
    >>> manifest = offline.preprocess("model.onnx", "images/", "pre/")  # doctest: +SKIP
    >>> out_dir = offline.infer("model.onnx", ["pre/"], "out/", output_dirname="run1")  # doctest: +SKIP
    >>> results = offline.postprocess("model.onnx", out_dir, manifest)  # doctest: +SKIP
"""

from __future__ import annotations

from unideploy.tools.offline.files import (FORMATS, MANIFEST_NAME, MANIFEST_VERSION, OUT_FORMATS, OUTPUTS_NAME,
                                           load_tensor, save_tensor)
from unideploy.tools.offline.infer import InferReport, infer
from unideploy.tools.offline.postprocess import iter_postprocess, postprocess
from unideploy.tools.offline.preprocess import preprocess, read_manifest

__all__ = [
    "FORMATS", "MANIFEST_NAME", "MANIFEST_VERSION", "OUTPUTS_NAME", "OUT_FORMATS", "InferReport", "infer",
    "iter_postprocess", "load_tensor", "postprocess", "preprocess", "read_manifest", "save_tensor",
]
