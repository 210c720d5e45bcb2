"""unideploy's own ``eval`` as NNCF's validation function for accuracy-controlled quantization.

NNCF hands the validation function a compiled candidate model (``openvino.CompiledModel`` for OpenVINO,
``onnx.ModelProto`` for ONNX). The gate wraps it in a backend session, puts that session into a
:class:`~unideploy.runtime.predictor.Predictor` of the float model (same spec, adapter and postprocessing), and
scores it with :func:`unideploy.tools.evaluate.evaluate_detection` on the labelled data set: mAP50-95 is the
metric NNCF compares against ``max_drop``. The raw outputs per image are returned too, so NNCF ranks
layers by how much each changes the outputs (cheaper and smoother than per-image mAP).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from unideploy.core.errors import ImageDecodeError
from unideploy.core.sources import read_image

#: evaluation settings of the gate (Ultralytics ``val`` defaults)
EVAL_CONF, EVAL_IOU = 0.001, 0.7


class AccuracyGate:
    """Validation data and function for ``nncf.quantize_with_accuracy_control``.

    Args:
        predictor: open Predictor of the float model on the backend being quantized (its session is swapped
            for each candidate and restored afterwards).
        dataset: labelled :class:`unideploy.tools.evaluate.Dataset` (images that cannot be decoded are left out).
        backend: "openvino" or "onnxruntime".
    """

    def __init__(self, predictor: Any, dataset: Any, backend: str) -> None:
        from unideploy.tools.evaluate import Dataset

        self.predictor = predictor
        self.backend = backend
        good, self.skipped = [], []
        for s in dataset.samples:
            try:
                read_image(s.path)
                good.append(s)
            except ImageDecodeError as e:
                self.skipped.append(str(e))
        self.dataset = Dataset(good, dataset.names, list(dataset.warnings), dataset.source)
        self.calls = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="unideploy_gate_")

    def close(self) -> None:
        self._tmp.cleanup()

    def input_of(self, sample: Any) -> Any:
        x = self.predictor.preprocess(read_image(sample.path))[0][None]
        if self.backend == "onnxruntime":
            return {self.predictor.session.inputs[0].name: x}
        return x

    def nncf_dataset(self) -> Any:
        import nncf

        return nncf.Dataset(self.dataset.samples, self.input_of)

    def _session(self, model: Any) -> Any:
        if self.backend == "openvino":
            from unideploy.runtime.backends.openvino import OpenVINOSession

            session = OpenVINOSession(self.predictor.path, "CPU", model, {}, {})
            session.compiled = model  # NNCF hands over a compiled candidate
            return session
        from unideploy.runtime.backends.onnxruntime import OnnxRuntimeBackend

        path = Path(self._tmp.name) / f"candidate{self.calls}.onnx"
        path.write_bytes(model.SerializeToString())
        return OnnxRuntimeBackend.open(path, "cpu")

    def evaluate(self, model: Any, samples: Iterable[Any]) -> tuple[dict[str, Any], list[list[np.ndarray]]]:
        """mAP report and per-image raw outputs of a candidate ``model`` on ``samples``."""
        from unideploy.tools.evaluate import Dataset, evaluate_detection

        self.calls += 1
        pred = self.predictor
        session = self._session(model)
        outputs: list[list[np.ndarray]] = []
        adapter = pred.adapter
        post = adapter.postprocess

        def capture(out: list[np.ndarray], infos: list[Any], options: Any = None) -> list[Any]:
            for i in range(len(infos)):
                outputs.append([np.array(o[i : i + 1]) for o in out])
            return post(out, infos, options)

        saved = pred.session
        pred.session, adapter.postprocess = session, capture
        try:
            ds = Dataset(list(samples), self.dataset.names, [], self.dataset.source)
            report = evaluate_detection(pred, ds, conf=EVAL_CONF, iou=EVAL_IOU)
        finally:
            pred.session = saved
            del adapter.postprocess  # back to the class method
            if self.backend == "onnxruntime":
                session.close()
        return report, outputs

    def validation_fn(self, model: Any, validation_data: Iterable[Any]) -> tuple[float, list[list[np.ndarray]]]:
        """NNCF validation function: (mAP50-95, raw outputs of every image)."""
        report, outputs = self.evaluate(model, validation_data)
        return float(report["mAP50-95"]), outputs
