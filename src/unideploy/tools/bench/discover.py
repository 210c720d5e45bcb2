"""Find the deployable variants of a model that sit beside it, and the backends that can run each.

``model.onnx`` -> ``model.onnx``, ``model_int8.onnx``, ``model_fp16.onnx``, ``model_openvino_model/``,
``model_int8_openvino_model/``, ``model*.xml`` in the same folder, and any other file a given backend opens
(``model.pt`` for torch, ``model.engine`` for TensorRT ...), matched by file name: the stem with a
precision token removed must equal the model's. Precision comes from the name (int8 / fp16 / half / bf16 /
fp32) or, failing that, from the file (QuantizeLinear / FakeQuantize nodes -> int8; f16 constants -> fp16).

Example:
    >>> from unideploy.tools.bench.discover import find_variants
    >>> [(v.path.name, v.backend, v.precision) for v in find_variants("yolov8n.onnx")]  # doctest: +SKIP
    [('yolov8n.onnx', 'onnxruntime', 'fp32'), ('yolov8n.onnx', 'openvino', 'fp32'), ('yolov8n.xml', 'openvino', 'fp32')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PRECISION_RE = re.compile(r"(?:^|[_\-.])(int8|i8|uint8|q8|quant(?:ized)?|fp16|half|f16|bf16|fp32|f32)(?=$|[_\-.])", re.IGNORECASE)
_PRECISION_NAMES = {"i8": "int8", "uint8": "int8", "q8": "int8", "quant": "int8", "quantized": "int8",
                    "half": "fp16", "f16": "fp16", "f32": "fp32"}
OV_DIR_SUFFIX = "_openvino_model"


@dataclass(frozen=True)
class Variant:
    """One model file and one backend to run it with.

    Example:
        >>> v = Variant(Path("m_int8.onnx"), "onnxruntime", "int8", "onnxruntime")
        >>> v.label
        'm_int8.onnx [onnxruntime]'
    """

    path: Path
    backend: str
    precision: str
    format: str  # the file type, named by the backend that opens it by default (see file_format)

    @property
    def size_mb(self) -> float:
        return model_size_bytes(self.path) / 2**20

    @property
    def label(self) -> str:
        return f"{self.path.name} [{self.backend}]"


def file_format(path: Path) -> str:
    """The file type of ``path``, named by the canonical name of the backend that opens it by default
    (``.onnx`` -> "onnxruntime", ``.xml`` -> "openvino", ``.om`` -> "ascend"); the bare suffix when no registered
    backend opens it.

    Example:
        >>> file_format(Path("m.om")), file_format(Path("m.engine")), file_format(Path("m.tflite"))
        ('ascend', 'tensorrt', 'tflite')
    """
    from unideploy.runtime.backends.registry import backend_for_path, get_backend, list_backends

    suffix = path.suffix.lower()
    if any(suffix in get_backend(name).suffixes for name in list_backends()):
        return backend_for_path(path)
    return suffix.lstrip(".")


def model_size_bytes(path: Path) -> int:
    """Bytes on disk: the file, plus the weights ``.bin`` of an OpenVINO ``.xml``, plus ONNX external data.

    Example:
        >>> model_size_bytes(Path("m_openvino_model/m.xml"))  # .xml + .bin  # doctest: +SKIP
        12861046
    """
    path = Path(path)
    total = path.stat().st_size
    if path.suffix.lower() == ".xml" and path.with_suffix(".bin").is_file():
        total += path.with_suffix(".bin").stat().st_size
    if path.suffix.lower() == ".onnx":
        for extra in (path.with_suffix(".onnx.data"), path.with_suffix(".data")):
            if extra.is_file():
                total += extra.stat().st_size
    return total


def base_stem(name: str) -> str:
    """Model name without an OpenVINO-folder suffix or a precision token: "yolov8n_int8" -> "yolov8n".

    Example:
        >>> base_stem("yolov8n_int8_openvino_model"), base_stem("yolov8n-fp16"), base_stem("yolov8n")
        ('yolov8n', 'yolov8n', 'yolov8n')
    """
    name = name.removesuffix(OV_DIR_SUFFIX)
    return _PRECISION_RE.sub("", name) or name


def precision_of(path: Path) -> str:
    """"int8", "fp16", "bf16" or "fp32" from the file name, else from a cheap look at the file.

    Example:
        >>> precision_of(Path("yolov8n_int8.onnx")), precision_of(Path("det-half.onnx"))
        ('int8', 'fp16')
    """
    names = [path.stem] + ([path.parent.name] if path.parent.name.endswith(OV_DIR_SUFFIX) else [])
    for name in names:
        m = _PRECISION_RE.search(name)
        if m:
            tok = m.group(1).lower()
            return _PRECISION_NAMES.get(tok, tok)
    try:
        if path.suffix.lower() == ".xml":
            text = path.read_text(errors="ignore")
            if "FakeQuantize" in text or 'element_type="i8"' in text or 'element_type="u8"' in text:
                return "int8"
            if re.search(r'type="Const"[^>]*>\s*<data[^>]*element_type="f16"', text):
                return "fp16"
            return "fp32"
        if path.suffix.lower() == ".onnx" and path.stat().st_size < 2**31:
            data = path.read_bytes()
            if b"QuantizeLinear" in data or b"QLinearConv" in data or b"MatMulInteger" in data:
                return "int8"
    except OSError:
        pass
    return "fp32"


def _candidates(model: Path, suffixes: set[str]) -> list[Path]:
    anchor = model.parent if model.parent.name.endswith(OV_DIR_SUFFIX) else model
    folder = anchor.parent
    stem = base_stem(anchor.stem if anchor.is_file() else anchor.name)
    found: list[Path] = []
    for p in sorted(folder.iterdir()):
        if base_stem(p.stem if p.is_file() else p.name) != stem:
            continue
        if p.is_file() and p.suffix.lower() in suffixes:
            found.append(p)
        elif p.is_dir() and p.name.endswith(OV_DIR_SUFFIX):
            found.extend(sorted(p.glob("*.xml")))
    return found


def find_variants(model: str | Path, backends: list[str] | None = None) -> list[Variant]:
    """The model and its precision / format variants beside it, paired with each available backend.

    Args:
        model: a model file (.onnx / .xml) or an OpenVINO model folder.
        backends: backends to consider (default: those installed on this machine).

    Raises:
        ModelError: the model path does not exist, or is a folder without exactly one OpenVINO .xml.

    Example:
        >>> [v.label for v in find_variants("yolov8n.onnx")]  # doctest: +SKIP
        ['yolov8n.onnx [onnxruntime]', 'yolov8n.onnx [openvino]', 'yolov8n.xml [openvino]']
    """
    from unideploy.runtime.backends.registry import canonical_backend, get_backend, list_backends
    from unideploy.runtime.open import resolve_model_path

    model = resolve_model_path(model)
    names = [canonical_backend(b) for b in backends] if backends is not None else list_backends(available_only=True)
    suffixes = {sfx.lower() for name in names for sfx in get_backend(name).suffixes}
    paths = _candidates(model, suffixes) or [model]
    if model.resolve() not in [p.resolve() for p in paths]:
        paths.insert(0, model)
    out: list[Variant] = []
    for p in paths:
        fmt = file_format(p)
        for name in names:
            if p.suffix.lower() in get_backend(name).suffixes:
                out.append(Variant(p, name, precision_of(p), fmt))
    return out
