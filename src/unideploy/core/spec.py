"""ModelSpec: what a model expects and what it outputs, read from the model file itself.

Sources, lowest to highest priority:
1. Ultralytics metadata: ONNX ``metadata_props``, ``metadata.yaml`` beside an OpenVINO IR, a torch checkpoint;
2. a unideploy spec embedded by ``unideploy export`` (ONNX ``metadata_props['unideploy']``, OpenVINO
   ``rt_info/unideploy``);
(1 and 2 arrive as one flat string dict read by the model's backend: :meth:`Backend.read_metadata`)
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
from typing import Any, Mapping

from unideploy.core.errors import SpecError

__all__ = ["ModelSpec", "SPEC_KEY", "IN_MODEL", "build_spec", "spec_from_metadata", "sidecar_paths", "parse_size", "parse_literal"]

SPEC_KEY = "unideploy"
#: the tasks a spec may name (Ultralytics' task names)
TASKS = ("detect", "classify", "segment", "pose", "obb")
#: Ultralytics YOLO family per task (detection and classification keep their own rules below)
_YOLO_TASK_FAMILY = {"segment": "yolo_seg", "pose": "yolo_pose", "obb": "yolo_obb"}
#: values of ``ModelSpec.in_model``: who runs the preprocessing after the resize (None: the host)
IN_MODEL = (None, "openvino", "aipp", "rknn")


@dataclass
class ModelSpec:
    """Everything the pipeline needs to know about a model besides its weights.

    Attributes:
        task: "detect", "classify", "segment", "pose" or "obb" (Ultralytics' task names).
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
        in_model: where the preprocessing after the resize (uint8 -> float, colour order, scale, mean/std, layout)
            runs: None on the host (numpy), else the runtime that does it inside the model: "openvino"
            (PrePostProcessor, applied at load or saved in the IR), "aipp" (Ascend AIPP), "rknn" (RKNN's
            mean/std). With it set the model takes the resized image as uint8 NHWC in ``in_model_order``, and
            ``channel_order``/``scale``/``mean``/``std`` still describe what the network computes.
        in_model_order: channel order of the uint8 image a model with ``in_model`` takes ("bgr": the decoded
            image as is; "rgb": the host flips it).
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
    in_model: str | None = None
    in_model_order: str = "bgr"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.imgsz is not None:
            self.imgsz = parse_size(self.imgsz, "imgsz")
        self.names = dict(sorted((int(k), str(v)) for k, v in (self.names or {}).items()))  # JSON keys sort as text
        self.mean = tuple(float(x) for x in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(x) for x in self.std)  # type: ignore[assignment]
        if self.task not in TASKS:
            raise SpecError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.channel_order not in ("rgb", "bgr"):
            raise SpecError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if self.in_model not in IN_MODEL:
            raise SpecError(f"in_model must be one of {', '.join(map(str, IN_MODEL))}; got {self.in_model!r}")
        if self.in_model_order not in ("rgb", "bgr"):
            raise SpecError(f"in_model_order must be 'rgb' or 'bgr', got {self.in_model_order!r}")
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


def parse_size(v: Any, what: str = "imgsz") -> tuple[int, int]:
    """(height, width) from one size or a pair: ``640``, ``"480,640"``, ``"480x640"``, ``[480, 640]``.

    Raises:
        SpecError: not one size or a pair of sizes (``what`` names the value in the message).

    Example:
        >>> parse_size("480x640"), parse_size(320)
        ((480, 640), (320, 320))
    """
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


#: the private names this module had before (still used in a few places)
_pair = parse_size


# --------------------------------------------------------------------------------------- merging

def parse_literal(v: str) -> Any:
    """A Python literal written as text (``"[640, 640]"`` -> a list), or the text itself when it is not one."""
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def spec_from_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """Spec fields found in a flat string metadata dict (Ultralytics keys and/or a unideploy spec)."""
    d: dict[str, Any] = {}
    if "names" in meta:
        names = parse_literal(meta["names"])
        if isinstance(names, (list, tuple)):
            names = dict(enumerate(names))
        if isinstance(names, dict):
            d["names"] = names
    if "imgsz" in meta:
        sz = parse_literal(meta["imgsz"])
        if isinstance(sz, (list, tuple, int)):
            d["imgsz"] = parse_size(sz, "imgsz")
    if "stride" in meta:
        s = parse_literal(meta["stride"])
        if isinstance(s, int):
            d["stride"] = s
    if meta.get("task") in TASKS:
        d["task"] = meta["task"]
    if "kpt_shape" in meta:
        d.setdefault("extra", {})["kpt_shape"] = parse_literal(meta["kpt_shape"])
    if "end2end" in meta:
        d["end2end"] = str(meta["end2end"]).strip().lower() == "true"
    head = meta.get("head")
    if head:
        d.setdefault("extra", {})["head"] = head
        if head == "RTDETRDecoder":
            d["end2end"] = True
    if "batch" in meta:
        b = parse_literal(meta["batch"])
        if isinstance(b, int):
            d.setdefault("extra", {})["export_batch"] = b
    if meta.get("author") == "Ultralytics":
        d.setdefault("extra", {})["preprocess"] = "ultralytics"  # family defaults (e.g. ImageNet mean/std) stay off
        rtdetr = head == "RTDETRDecoder" or "rtdetr" in meta.get("description", "").lower().replace("-", "")
        d["family"] = "classify" if d.get("task") == "classify" else "rtdetr" if rtdetr else "yolo"
        d["family"] = _YOLO_TASK_FAMILY.get(d.get("task", ""), d["family"])
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


def build_spec(model_path: str | Path, metadata: Mapping[str, str] | None = None,
               overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """The spec of a model file from the metadata its backend read (:meth:`Backend.read_metadata`), the sidecar
    JSON beside it, then ``overrides`` (non-None values win).

    Reading a file's own metadata is the backend's job; :func:`unideploy.read_spec` picks the backend for a path
    and calls this.

    Raises:
        SpecError: the metadata or the sidecar holds a spec that is not valid JSON or has unknown fields.

    Example:
        >>> build_spec("model.onnx", {"imgsz": "[320, 320]", "names": "{0: 'a'}"}).imgsz  # doctest: +SKIP
        (320, 320)
    """
    p = Path(model_path)
    d = spec_from_metadata(dict(metadata or {}))
    for side in sidecar_paths(p):
        if side.is_file() and side != p:
            try:
                side_spec = json.loads(side.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SpecError(f"{side}: expected a JSON model spec, could not parse it ({e})") from None
            if not isinstance(side_spec, dict):
                raise SpecError(f"{side}: expected a JSON object (a model spec), got a {type(side_spec).__name__}")
            d.update({**side_spec, "extra": {**d.get("extra", {}), **side_spec.get("extra", {})}}
                     if isinstance(side_spec.get("extra"), dict) else side_spec)
            break
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if isinstance(given.get("extra"), dict):  # extra keys are merged, so one key can be overridden alone
        given["extra"] = {**d.get("extra", {}), **given["extra"]}
    d.update(given)
    return ModelSpec.from_dict(d)
