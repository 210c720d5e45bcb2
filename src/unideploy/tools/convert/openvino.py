"""The ``openvino`` target: ONNX -> OpenVINO IR (``.xml`` + ``.bin``) with ``openvino.convert_model`` /
``openvino.save_model``, FP32 or FP16 weights, the spec in ``rt_info``.

Default output (Ultralytics' convention, which ``unideploy.load`` also opens as a folder):
``<stem>_openvino_model/<stem>.xml``. ``--out`` may name the ``.xml`` file or a folder.
"""

from __future__ import annotations

from pathlib import Path

from unideploy.core.errors import ModelError
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
    out = ir_path(opts)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # noqa: BLE001 - the converter's message names the unsupported op
        text = str(e).strip().splitlines()
        raise ModelError(f"{onnx_path.name}: openvino could not convert it: {text[0] if text else type(e).__name__}") from None
    embed_openvino(model, spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out), compress_to_fp16=bool(opts.half))
    write_ultralytics_yaml(out, read_onnx_metadata(onnx_path))
    return out
