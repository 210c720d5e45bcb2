"""ModelSpec: what a model expects and what it outputs, read from the model file itself.

Sources, lowest to highest priority:
1. Ultralytics metadata: ONNX ``metadata_props`` or ``metadata.yaml`` beside an OpenVINO IR;
2. a unideploy spec embedded by ``unideploy export`` (ONNX ``metadata_props['unideploy']``, OpenVINO
   ``rt_info/unideploy``);
3. a sidecar JSON beside the model (``model.onnx`` -> ``model.json`` or ``model.unideploy.json``);
4. explicit overrides (CLI flags / keyword arguments).
Anything still unknown (input size, batch) is filled from the runtime's declared input shape.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ModelError, SpecError

SPEC_KEY = "unideploy"


@dataclass
class ModelSpec:
    """Everything the pipeline needs to know about a model besides its weights.

    Attributes:
        task: "detect" or "classify".
        family: adapter name ("yolo", "yolov5", "yolox", "rtdetr", "nanodet", "classify"); None = detect.
        imgsz: model input (height, width).
        batch: fixed batch size, or None when dynamic.
        stride: largest feature stride.
        names: class index -> name.
        end2end: True when the output is already (B, K, 6) boxes (no NMS needed); None = infer.
        channel_order: "rgb" or "bgr" order the network expects.
        scale: factor applied to uint8 pixels before mean/std.
        mean, std: per-channel normalisation after scaling (in ``channel_order``).
        resize: "letterbox" (centred), "letterbox_topleft", "stretch", or "crop" (resize short side + centre crop).
        pad_value: padding value for letterbox.
        layout: "nchw" or "nhwc".
        input_dtype: numpy dtype name of the input tensor.
        extra: anything else found in the metadata.

    Example:
        >>> s = ModelSpec(imgsz=(320, 320), names={0: "a"})
        >>> ModelSpec.from_json(s.to_json()).imgsz
        (320, 320)
    """

    task: str = "detect"
    family: str | None = None
    imgsz: tuple[int, int] | None = None
    batch: int | None = None
    stride: int = 32
    names: dict[int, str] = field(default_factory=dict)
    end2end: bool | None = None
    channel_order: str = "rgb"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "letterbox"
    pad_value: int = 114
    layout: str = "nchw"
    input_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.imgsz is not None:
            self.imgsz = _pair(self.imgsz, "imgsz")
        self.names = dict(sorted((int(k), str(v)) for k, v in (self.names or {}).items()))  # JSON keys sort as text
        self.mean = tuple(float(x) for x in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(x) for x in self.std)  # type: ignore[assignment]
        if self.task not in ("detect", "classify"):
            raise SpecError(f"task must be 'detect' or 'classify', got {self.task!r}")
        if self.channel_order not in ("rgb", "bgr"):
            raise SpecError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if self.resize not in ("letterbox", "letterbox_topleft", "stretch", "crop"):
            raise SpecError(
                f"resize must be one of letterbox, letterbox_topleft, stretch, crop; got {self.resize!r}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = {str(k): v for k, v in self.names.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"unknown model spec field(s) {unknown}; valid fields: {sorted(known)}")
        try:
            return cls(**d)
        except SpecError:
            raise
        except (TypeError, ValueError, AttributeError) as e:  # a field of the wrong type in user metadata
            raise SpecError(f"model spec has a field of the wrong type or value ({e}); fields: {d}") from None

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))

    def updated(self, **overrides: Any) -> ModelSpec:
        """A copy with the non-None overrides applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _pair(v: Any, what: str) -> tuple[int, int]:
    try:
        return _pair_unchecked(v, what)
    except (TypeError, ValueError, OverflowError):
        raise SpecError(f"{what} must be one size or (height, width), got {v!r}") from None


def _pair_unchecked(v: Any, what: str) -> tuple[int, int]:
    if isinstance(v, str):
        v = [int(x) for x in re.split(r"[,x ]+", v.strip()) if x]
    if isinstance(v, (int, float)):
        return int(v), int(v)
    v = list(v)
    if len(v) == 1:
        return int(v[0]), int(v[0])
    if len(v) != 2:
        raise SpecError(f"{what} must be one size or (height, width), got {v!r}")
    return int(v[0]), int(v[1])


# ----------------------------------------------------------------------------------------- ONNX

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) of one protobuf message (values of type 2 as bytes)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            val, pos = buf[pos : pos + ln], pos + ln
            if pos > len(buf):
                raise ValueError("truncated field")
        elif wt == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, val


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read without the ``onnx`` package.

    Raises:
        ModelError: the file is not a valid ONNX protobuf.
    """
    data = Path(path).read_bytes()
    out: dict[str, str] = {}
    seen_graph = False
    try:
        for num, wt, val in _fields(data):
            if num == 7 and wt == 2:
                seen_graph = True
            elif num == 14 and wt == 2:
                kv = {n: v for n, _, v in _fields(val)}
                out[kv.get(1, b"").decode("utf-8", "replace")] = kv.get(2, b"").decode("utf-8", "replace")
    except (ValueError, IndexError) as e:
        raise ModelError(f"{path}: expected an ONNX model (protobuf ModelProto), but it could not be parsed ({e})") from None
    if not seen_graph:
        raise ModelError(f"{path}: expected an ONNX model (protobuf ModelProto with a graph), found none")
    return out


# ------------------------------------------------------------------------------------- OpenVINO

def read_openvino_metadata(xml_path: str | Path) -> dict[str, str]:
    """Ultralytics ``metadata.yaml`` beside an IR, plus a unideploy spec stored in its ``rt_info``."""
    xml_path = Path(xml_path)
    out: dict[str, str] = {}
    yml = xml_path.parent / "metadata.yaml"
    if yml.is_file():
        import yaml

        try:
            data = yaml.safe_load(yml.read_text()) or {}
        except yaml.YAMLError as e:
            raise ModelError(f"{yml}: expected Ultralytics metadata YAML, could not parse it ({e})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{yml}: expected Ultralytics metadata YAML (a mapping), got a {type(data).__name__}")
        out.update({str(k): (v if isinstance(v, str) else repr(v)) for k, v in data.items()})
    text = xml_path.read_text(errors="replace")
    i = text.rfind("<rt_info>")
    if i >= 0:
        m = re.search(r'<%s\s+value="([^"]*)"' % SPEC_KEY, text[i:])
        if m:
            import html

            out[SPEC_KEY] = html.unescape(m.group(1))
    return out


# --------------------------------------------------------------------------------------- merging

def _literal(v: str) -> Any:
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def spec_from_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """Spec fields found in a flat string metadata dict (Ultralytics keys and/or a unideploy spec)."""
    d: dict[str, Any] = {}
    if "names" in meta:
        names = _literal(meta["names"])
        if isinstance(names, (list, tuple)):
            names = dict(enumerate(names))
        if isinstance(names, dict):
            d["names"] = names
    if "imgsz" in meta:
        sz = _literal(meta["imgsz"])
        if isinstance(sz, (list, tuple, int)):
            d["imgsz"] = _pair(sz, "imgsz")
    if "stride" in meta:
        s = _literal(meta["stride"])
        if isinstance(s, int):
            d["stride"] = s
    if meta.get("task") in ("detect", "classify"):
        d["task"] = meta["task"]
    if "end2end" in meta:
        d["end2end"] = str(meta["end2end"]).strip().lower() == "true"
    head = meta.get("head")
    if head:
        d.setdefault("extra", {})["head"] = head
        if head == "RTDETRDecoder":
            d["end2end"] = True
    if "batch" in meta:
        b = _literal(meta["batch"])
        if isinstance(b, int):
            d.setdefault("extra", {})["export_batch"] = b
    if meta.get("author") == "Ultralytics":
        d.setdefault("extra", {})["preprocess"] = "ultralytics"  # family defaults (e.g. ImageNet mean/std) stay off
        rtdetr = head == "RTDETRDecoder" or "rtdetr" in meta.get("description", "").lower().replace("-", "")
        d["family"] = "classify" if d.get("task") == "classify" else "rtdetr" if rtdetr else "yolo"
        if d.get("task") == "classify":
            d["resize"] = "crop"
        if rtdetr:
            d["resize"] = "stretch"  # RTDETRPredictor's scale_fill
    if SPEC_KEY in meta:
        try:
            own = json.loads(meta[SPEC_KEY])
        except json.JSONDecodeError as e:
            raise SpecError(f"embedded unideploy spec is not valid JSON ({e})") from None
        if not isinstance(own, dict) or not isinstance(own.get("extra", {}), dict):
            raise SpecError(f"embedded unideploy spec must be a JSON object, got {meta[SPEC_KEY][:80]!r}")
        extra = {**d.get("extra", {}), **own.pop("extra", {})}
        d.update(own)
        d["extra"] = extra
    return d


def sidecar_paths(model_path: Path) -> list[Path]:
    base = model_path if model_path.is_dir() else model_path.with_suffix("")
    return [base.with_name(base.name + ".unideploy.json"), base.with_suffix(".json")]


def read_spec(model_path: str | Path, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """Build the spec of a model file from every source it carries, then apply ``overrides``.

    Example:
        >>> spec = read_spec("model.onnx", {"imgsz": 640})  # doctest: +SKIP
    """
    p = Path(model_path)
    meta: dict[str, str] = {}
    if p.suffix.lower() == ".onnx":
        meta = read_onnx_metadata(p)
    elif p.suffix.lower() == ".xml":
        meta = read_openvino_metadata(p)
    elif p.suffix.lower() in (".pt", ".pth", ".torchscript", ".pt2", ".ts"):  # read without unpickling anything
        from .backends.torch import read_torch_metadata

        meta = read_torch_metadata(p)
    d = spec_from_metadata(meta)
    for side in sidecar_paths(p):
        if side.is_file() and side != p:
            try:
                side_spec = json.loads(side.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SpecError(f"{side}: expected a JSON model spec, could not parse it ({e})") from None
            if not isinstance(side_spec, dict):
                raise SpecError(f"{side}: expected a JSON object (a model spec), got a {type(side_spec).__name__}")
            d.update(side_spec)
            break
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return ModelSpec.from_dict(d)
