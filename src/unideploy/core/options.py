"""Options are data: postprocess thresholds and backend settings as dataclasses, validated once.

Every check lives here, once. Errors are :class:`~unideploy.core.errors.OptionError`, which names the option as
the caller spelt it (``conf`` from Python, ``--conf`` from the command line) and says what was expected and given.

Example:
    >>> opts = PostprocessOptions(conf=0.3)
    >>> opts.resolved({"conf": 0.25, "iou": 0.45}).iou
    0.45
    >>> PostprocessOptions(conf=2)
    Traceback (most recent call last):
    ...
    unideploy.core.errors.OptionError: conf must be between 0 and 1, got 2
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence, TypeVar

from unideploy.core.errors import OptionError

__all__ = [
    "PostprocessOptions", "BackendOptions", "GENERIC_DEFAULTS", "check_fraction", "check_positive_int",
    "check_non_negative_int", "unknown_keys",
]

#: defaults for a family that declares none (Ultralytics' predict defaults)
GENERIC_DEFAULTS: dict[str, Any] = {"conf": 0.25, "iou": 0.7, "max_det": 300}

OptionsT = TypeVar("OptionsT", bound="BackendOptions")


def check_fraction(value: Any, name: str) -> float:
    """``value`` as a float in [0, 1]; otherwise an OptionError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OptionError(name, f"must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise OptionError(name, f"must be between 0 and 1, got {value}")
    return v


def _int(value: Any, name: str, what: str) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise OptionError(name, f"must be {what}, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OptionError(name, f"must be {what}, got {value!r}") from None


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1; otherwise an OptionError naming ``name``."""
    v = _int(value, name, "a positive integer")
    if v < 1:
        raise OptionError(name, f"must be a positive integer, got {value}")
    return v


def check_non_negative_int(value: Any, name: str) -> int:
    """``value`` as an int >= 0; otherwise an OptionError naming ``name``."""
    v = _int(value, name, "a non-negative integer")
    if v < 0:
        raise OptionError(name, f"must be a non-negative integer, got {value}")
    return v


def unknown_keys(given: Mapping[str, Any], valid: Sequence[str], what: str) -> None:
    """Raise an OptionError when ``given`` has a key outside ``valid`` (the message lists the valid ones)."""
    bad = sorted(set(given) - set(valid))
    if bad:
        raise OptionError(bad[0], f"is not a {what} option; valid: {', '.join(sorted(valid)) or 'none'}")


@dataclass(frozen=True)
class PostprocessOptions:
    """What postprocessing keeps. ``None`` means "the model family's default" (see :meth:`resolved`).

    Args:
        conf: score threshold in [0, 1] (family default; 0.25 for Ultralytics models).
        iou: NMS IoU threshold in [0, 1] (family default; 0.7 for Ultralytics models, 0.45 for YOLOv5 / YOLOX as
            their reference code uses).
        max_det: detections kept per image (family default; 300).
        classes: keep only these class indices (None = all).
        agnostic: class-agnostic NMS.
        multi_label: NMS candidates are every (box, class) pair over ``conf``, so a box may be kept once per class
            (Ultralytics' ``val``; its ``predict`` keeps the best class per box, the default here). Honoured by the
            Ultralytics YOLO detect, segment and OBB adapters.
        top_k: classes reported per image by classifiers.
        retina_masks: segmentation masks assembled at the original image size (True, the default: Ultralytics'
            ``process_mask_native``), or at the model input size and then mapped onto the image (False:
            Ultralytics' default ``process_mask``, mapped as its plotting does; see docs/tasks.md).
    """

    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    top_k: int = 5
    multi_label: bool = False
    retina_masks: bool = True
    num_classes: int | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.conf is not None:
            set_(self, "conf", check_fraction(self.conf, "conf"))
        if self.iou is not None:
            set_(self, "iou", check_fraction(self.iou, "iou"))
        if self.max_det is not None:
            set_(self, "max_det", check_positive_int(self.max_det, "max_det"))
        set_(self, "top_k", check_positive_int(self.top_k, "top_k"))
        set_(self, "agnostic", bool(self.agnostic))
        if self.multi_label not in (True, False):
            raise OptionError("multi_label", f"must be True or False, got {self.multi_label!r}")
        set_(self, "multi_label", bool(self.multi_label))
        if self.retina_masks not in (True, False):  # 1 / 0 and numpy booleans compare equal; "no" does not
            raise OptionError("retina_masks", f"must be True or False, got {self.retina_masks!r}")
        set_(self, "retina_masks", bool(self.retina_masks))
        if self.classes is not None:
            if isinstance(self.classes, (int, str)):
                set_(self, "classes", (self.classes,))
            ids = tuple(check_non_negative_int(c, "classes") for c in self.classes)  # type: ignore[union-attr]
            if self.num_classes is not None:
                out = [c for c in ids if c >= self.num_classes]
                if out:
                    raise OptionError("classes", f"must be class indices 0..{self.num_classes - 1} of this model, "
                                                 f"got {', '.join(map(str, out))}")
            set_(self, "classes", ids)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, *, num_classes: int | None = None) -> PostprocessOptions:
        """Options from a mapping of keyword arguments; unknown keys are an error listing the valid ones."""
        values = dict(values or {})
        valid = [f.name for f in fields(cls) if f.name != "num_classes"]
        unknown_keys(values, valid, "postprocess")
        return cls(**values, num_classes=num_classes)

    def updated(self, **changes: Any) -> PostprocessOptions:
        """A copy with ``changes`` applied (validated); ``None`` values leave a field as it is."""
        changes = {k: v for k, v in changes.items() if v is not None}
        valid = [f.name for f in fields(self) if f.name != "num_classes"]
        unknown_keys(changes, valid, "postprocess")
        return dataclasses.replace(self, **changes)

    def resolved(self, defaults: Mapping[str, Any] | None = None) -> PostprocessOptions:
        """Fill the fields left ``None`` from a family's ``defaults``, then from :data:`GENERIC_DEFAULTS`."""
        merged = {**GENERIC_DEFAULTS, **(defaults or {})}
        fill = {k: merged[k] for k in ("conf", "iou", "max_det") if getattr(self, k) is None and k in merged}
        return dataclasses.replace(self, **fill) if fill else self

    def to_dict(self) -> dict[str, Any]:
        """Plain values (classes as a list), for reports and JSON."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "num_classes"}
        if d["classes"] is not None:
            d["classes"] = list(d["classes"])
        return d


@dataclass(frozen=True)
class BackendOptions:
    """Base of each backend's declared options (a backend subclasses it and lists its own fields).

    :meth:`from_mapping` rejects unknown keys with the list of valid ones, so a misspelt option never passes
    silently.
    """

    @classmethod
    def from_mapping(cls: type[OptionsT], values: Mapping[str, Any] | None, backend: str = "backend") -> OptionsT:
        values = dict(values or {})
        valid = [f.name for f in fields(cls)]
        unknown_keys(values, valid, f"backend ({backend})")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
