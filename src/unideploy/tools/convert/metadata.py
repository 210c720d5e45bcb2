"""Embed the model spec in an artefact's own metadata, where :func:`unideploy.read_spec` finds it.

* ONNX: ``metadata_props`` key ``"unideploy"`` holding :meth:`ModelSpec.to_json` (other keys, such as
  Ultralytics' ``names`` / ``imgsz``, are kept);
* OpenVINO IR: ``rt_info`` key ``"unideploy"`` (the same JSON), plus the ``model_info`` entries the
  OpenVINO Model API reads for YOLO detectors.

Example:
    >>> import onnx
    >>> m = onnx.load("model.onnx")  # doctest: +SKIP
    >>> embed_onnx(m, ModelSpec(imgsz=(640, 640), names={0: "person"}))  # doctest: +SKIP
    >>> onnx.save(m, "model.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from unideploy.core.spec import SPEC_KEY, ModelSpec


def embed_onnx(model: Any, spec: ModelSpec) -> None:
    """Set ``metadata_props['unideploy']`` of an ``onnx.ModelProto`` to the spec JSON (replacing an older one)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != SPEC_KEY]
    del model.metadata_props[:]
    for k, v in keep + [(SPEC_KEY, spec.to_json())]:
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v


def onnx_metadata(model: Any) -> dict[str, str]:
    """``metadata_props`` of an ``onnx.ModelProto`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def embed_openvino(model: Any, spec: ModelSpec) -> None:
    """Set ``rt_info['unideploy']`` of an ``openvino.Model`` to the spec JSON.

    ``openvino.convert_model`` copies an ONNX file's ``metadata_props`` into ``rt_info['framework']``; a spec
    found there is dropped so that the IR carries exactly one (the top-level one).
    """
    if model.has_rt_info(["framework", SPEC_KEY]):
        framework = {k: v for k, v in model.get_rt_info()["framework"].items() if k != SPEC_KEY}
        del model.get_rt_info()["framework"]
        for k, v in framework.items():
            model.set_rt_info(str(v), ["framework", k])
    model.set_rt_info(spec.to_json(), [SPEC_KEY])
    if spec.task == "detect" and spec.family in ("yolo", None) and spec.resize == "letterbox" and spec.names:
        # OpenVINO Model API (model_api.models.YOLO) reads these
        model.set_rt_info("YOLO", ["model_info", "model_type"])
        model.set_rt_info(spec.channel_order == "rgb", ["model_info", "reverse_input_channels"])
        model.set_rt_info(int(spec.pad_value), ["model_info", "pad_value"])
        model.set_rt_info([1.0 / spec.scale if spec.scale else 1.0], ["model_info", "scale_values"])
        model.set_rt_info("fit_to_window_letterbox", ["model_info", "resize_type"])
        model.set_rt_info([v.replace(" ", "_") for _, v in sorted(spec.names.items())], ["model_info", "labels"])


def write_ultralytics_yaml(xml_path: Path, onnx_meta: dict[str, str]) -> Path | None:
    """Write Ultralytics' ``metadata.yaml`` beside an IR made from an Ultralytics ONNX export.

    Ultralytics' own loader (``YOLO("x_openvino_model/")``) reads class names and input size from it, so the
    IR stays usable there too. Nothing is written for other ONNX files.
    """
    if onnx_meta.get("author") != "Ultralytics":
        return None
    import yaml

    def value(v: str) -> Any:
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v

    data = {k: value(v) for k, v in onnx_meta.items() if k != SPEC_KEY}
    path = xml_path.parent / "metadata.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path
