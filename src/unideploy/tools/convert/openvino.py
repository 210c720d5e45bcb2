"""The ``openvino`` target: ONNX -> OpenVINO IR (``.xml`` + ``.bin``) with ``openvino.convert_model`` /
``openvino.save_model``, FP32 or FP16 weights, the spec in ``rt_info``.

Default output (Ultralytics' convention, which ``unideploy.load`` also opens as a folder):
``<stem>_openvino_model/<stem>.xml``. ``--out`` may name the ``.xml`` file or a folder.

``--option in_model_preprocess=true`` saves the preprocessing after the resize into the IR (PrePostProcessor:
uint8 NHWC BGR input; see :mod:`unideploy.runtime.backends.openvino_ppp`) and records ``in_model="openvino"`` in the
embedded spec, so a load feeds the letterboxed uint8 image and does not add the steps again. Without it the IR
keeps its float NCHW input and the OpenVINO backend adds the same steps at load (its ``in_model_preprocess``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unideploy.core.errors import InputError, ModelError
from unideploy.core.onnx_file import read_onnx_metadata
from unideploy.core.spec import ModelSpec
from unideploy.tools.convert import ExportOptions, require
from unideploy.tools.convert.metadata import embed_openvino, write_ultralytics_yaml


def ir_path(opts: ExportOptions) -> Path:
    """Where the IR goes: ``--out`` as a .xml file or a folder, else ``<base>_openvino_model/<stem>.xml``."""
    if opts.out is not None:
        out = Path(opts.out)
        return out if out.suffix.lower() == ".xml" else out / f"{opts.base.name}.xml"
    return opts.base.with_name(f"{opts.base.name}_openvino_model") / f"{opts.base.name}.xml"


def onnx_to_openvino(onnx_path: Path, spec: ModelSpec, opts: ExportOptions) -> Path:
    """Convert an ONNX file to OpenVINO IR and embed ``spec``.

    Example:
        >>> import unideploy
        >>> unideploy.export("model.onnx", to="openvino", half=True)  # doctest: +SKIP
        PosixPath('model_openvino_model/model.xml')
    """
    ov = require("openvino", "openvino", "conversion to OpenVINO IR")
    unknown = sorted(set(opts.extra) - {"in_model_preprocess"})
    if unknown:
        raise InputError(f"unknown openvino option(s) {unknown}; valid: in_model_preprocess")
    fuse = _flag(opts.extra.get("in_model_preprocess", False))
    out = ir_path(opts)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # noqa: BLE001 - the converter's message names the unsupported op
        text = str(e).strip().splitlines()
        raise ModelError(f"{onnx_path.name}: openvino could not convert it: {text[0] if text else type(e).__name__}") from None
    if fuse:
        model, spec = _with_preprocessing(ov, model, spec)
    embed_openvino(model, spec)
    if fuse and model.has_rt_info(["model_info", "model_type"]):  # OpenVINO Model API: the IR does these itself
        model.set_rt_info(False, ["model_info", "reverse_input_channels"])
        model.set_rt_info([1.0], ["model_info", "scale_values"])
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out), compress_to_fp16=bool(opts.half))
    write_ultralytics_yaml(out, read_onnx_metadata(onnx_path))
    return out


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise InputError(f"openvino option in_model_preprocess must be true or false, got {value!r}")


def _with_preprocessing(ov: Any, model: Any, spec: ModelSpec) -> tuple[Any, ModelSpec]:
    """The IR with the family's preprocessing as PrePostProcessor steps, and the spec that records it."""
    from unideploy.runtime.backends.openvino import _infos
    from unideploy.runtime.backends.openvino_ppp import add_preprocessing, fusable, in_model_spec
    from unideploy.tools.convert.tensorrt import family_adapter

    full = family_adapter(spec, _infos(model.outputs, "output")).spec  # the family's colour order, scale, mean/std
    why = fusable(model, full)
    if why is not None:
        raise InputError(f"in_model_preprocess: the preprocessing cannot go into this model: {why}")
    return add_preprocessing(ov, model, full), in_model_spec(full)
