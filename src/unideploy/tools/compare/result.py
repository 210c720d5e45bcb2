"""What a comparison is made of: its two sides, its thresholds, its checks and its result.

Example:
    >>> parse_target("m.onnx@ov:CPU")
    Target(model='m.onnx', backend='openvino', device='CPU')
    >>> Thresholds(atol=0.05).atol
    0.05
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import InputError
from unideploy.tools.compare.classification import ClassificationStats
from unideploy.tools.compare.detections import DetectionStats
from unideploy.tools.compare.task_level import TaskStats
from unideploy.tools.compare.tensors import TensorStats

__all__ = ["LEVELS", "Check", "CompareResult", "Target", "Thresholds", "parse_target", "threshold_check"]

LEVELS = ("all", "tensor", "task")


@dataclass(frozen=True)
class Target:
    """One side of a comparison: a model file, and optionally a backend and a device.

    Example:
        >>> t = parse_target("model.onnx@onnxruntime:cuda:0")
        >>> t.model, t.backend, t.device
        ('model.onnx', 'onnxruntime', 'cuda:0')
        >>> str(t)
        'model.onnx@onnxruntime:cuda:0'
    """

    model: str
    backend: str | None = None
    device: str | None = None

    def __str__(self) -> str:
        s = self.model
        if self.backend:
            s += f"@{self.backend}"
            if self.device:
                s += f":{self.device}"
        return s


def parse_target(text: str | os.PathLike) -> Target:
    """Parse ``MODEL[@backend[:device]]``.

    The backend is recognised only if it is a registered backend name or alias, so a path that happens to
    contain '@' still works; a path that exists as given is always taken whole.

    Raises:
        InputError: the text has an ``@suffix`` that names no backend (the message lists the backends).

    Example:
        >>> parse_target("m.xml@openvino:CPU")
        Target(model='m.xml', backend='openvino', device='CPU')
        >>> parse_target("m.onnx")
        Target(model='m.onnx', backend=None, device=None)
    """
    from unideploy.runtime.backends.registry import BACKENDS

    s = os.fspath(text)
    if "@" not in s or Path(s).exists():
        return Target(s)
    model, _, rest = s.rpartition("@")
    name, _, device = rest.partition(":")
    known = set(BACKENDS.names()) | set(BACKENDS.aliases())
    if not model or name.lower() not in known:
        raise InputError(
            f"{s!r}: expected MODEL[@backend[:device]] with backend one of {', '.join(BACKENDS.names())}; "
            f"got backend {name!r}"
        )
    return Target(model, BACKENDS.canonical(name), device or None)


@dataclass
class Thresholds:
    """Pass/fail limits of a comparison (the defaults suit an FP32 -> FP32 conversion; loosen them for INT8).

    Attributes:
        atol, rtol: an element fails when |cand - ref| > atol + rtol * |ref|.
        max_fail_pct: most failing elements allowed per output, in percent.
        min_cosine: lowest per-sample cosine similarity allowed per output.
        rel_eps: floor of the relative-error denominator max(|ref|, rel_eps) (reported, not checked).
        max_missed_frac: most reference boxes allowed without a candidate match (fraction).
        max_extra_frac: most candidate boxes allowed without a reference match (fraction).
        max_score_delta: largest score change allowed for a matched box.
        max_shift_px: largest corner displacement allowed for a matched box, in original-image pixels.
        min_top1_agreement: lowest fraction of images with the same best class.
        max_prob_delta: largest probability change allowed for a class.
        min_mask_iou: lowest mean mask IoU of matched instances (segmentation).
        min_mask_iou_p5: lowest 5th percentile of the matched instances' mask IoU (segmentation).
        max_kpt_px: largest keypoint displacement of a matched instance, in original-image pixels (pose).
        min_oks: lowest mean object keypoint similarity of matched instances (pose).
        min_rotated_iou: lowest mean rotated-box IoU of matched instances (oriented boxes).
        max_angle_deg: largest rotation difference of a matched oriented box, in degrees.

    Example:
        >>> Thresholds(atol=0.05).rtol
        0.001
    """

    atol: float = 1e-3
    rtol: float = 1e-3
    max_fail_pct: float = 0.1
    min_cosine: float = 0.999
    rel_eps: float = 1e-6
    max_missed_frac: float = 0.05
    max_extra_frac: float = 0.05
    max_score_delta: float = 0.1
    max_shift_px: float = 4.0
    min_top1_agreement: float = 0.99
    max_prob_delta: float = 0.1
    min_mask_iou: float = 0.95
    min_mask_iou_p5: float = 0.8
    max_kpt_px: float = 4.0
    min_oks: float = 0.95
    min_rotated_iou: float = 0.95
    max_angle_deg: float = 3.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or not np.isfinite(float(v)) or float(v) < 0:
                raise InputError(f"threshold {f.name} must be a number >= 0, got {v!r}")
            setattr(self, f.name, float(v))


#: limits by the precision the models compute in (the looser side decides): about six of that format's epsilons
#: for bf16 (2**-7) and ten of fp16's (2**-10), where a whole network's rounding lands; measured on the demo model,
#: ONNX Runtime fp32 vs OpenVINO bf16 leaves 20% of elements outside 1e-3 but 0.003% outside 5e-2.
#: INT8 (a model whose metadata says int8, as ``unideploy quantize`` writes) from the measurement in
#: benchmarks/results/compare_int8.json: the demo model quantised by ``quantize --backend onnxruntime`` vs its FP32
#: on 100 held-out images leaves 0.057% of elements outside atol = rtol = 0.1 (cosine >= 0.99997), moves its worst
#: box by 11.7 px (mean 0.6) and its worst score by 0.22 (mean 0.017); the same model with 5% (10%) noise on every
#: conv weight leaves 3.6% (11.8%) outside and fails, so the limits keep a ~9x margin over INT8's own error.
TENSOR_LIMITS: dict[str, dict[str, float]] = {
    "fp32": {"atol": 1e-3, "rtol": 1e-3},
    "fp16": {"atol": 1e-2, "rtol": 1e-2},
    "bf16": {"atol": 5e-2, "rtol": 5e-2},
    "int8": {"atol": 0.1, "rtol": 0.1, "max_fail_pct": 0.5, "max_score_delta": 0.25, "max_shift_px": 16.0},
}


def thresholds_for(precision: str, base: Thresholds | None = None, **limits: float) -> Thresholds:
    """The limits for models computing in ``precision``: :data:`TENSOR_LIMITS` over ``base`` (default
    :class:`Thresholds`), then ``limits`` (what the caller set) over both.

    Example:
        >>> thresholds_for("bf16").atol, thresholds_for("bf16", atol=0.01).atol, thresholds_for("fp32").atol
        (0.05, 0.01, 0.001)
    """
    values = asdict(base) if base is not None else {}
    return Thresholds(**{**values, **TENSOR_LIMITS.get(precision, {}), **limits})


@dataclass
class Check:
    """One threshold test: ``value op limit`` (op is ">=" or "<=") at a level ("tensor", "detect", "classify",
    "segment", "pose", "obb")."""

    level: str
    name: str
    value: float | None
    op: str
    limit: float | None
    passed: bool
    detail: str = ""

    def describe(self) -> str:
        if self.value is None:
            return f"{self.level} {self.name}: {self.detail}"
        return f"{self.level} {self.name} = {_fmt(self.value)} (limit {self.op} {_fmt(self.limit)})"


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}"


def threshold_check(level: str, name: str, value: float, op: str, limit: float) -> Check:
    """A :class:`Check` of ``value op limit``; a non-finite value fails.

    Example:
        >>> threshold_check("tensor", "out0 cosine_min", 0.9995, ">=", 0.999).passed
        True
    """
    ok = bool(np.isfinite(value)) and (value >= limit if op == ">=" else value <= limit)
    return Check(level, name, float(value), op, float(limit), ok)


@dataclass
class CompareResult:
    """Outcome of a comparison; ``bool(result)`` is True when every check passed.

    Attributes:
        ref, candidate: the two sides as ``MODEL@backend:device``.
        source: what was fed ("random" or the data source). samples: images compared.
        level: "all", "tensor" or "task". task: "detect" or "classify" (None when unknown).
        thresholds: the limits used. conf: confidence threshold of the task level.
        precision: what the looser side computes in (fp32, fp16, bf16): the tensor limits follow it unless set.
        tensors: one :class:`TensorStats` per matched output. pairing: "name", "position" or "partial".
        detection / classification: task-level statistics (None when not run).
        instances: masks / keypoints / rotated boxes of the matched instances (segment, pose, obb models).
        layers: first-diverging-layer analysis (None unless asked for).
        checks: every threshold test. notes: things worth knowing. skipped: (image, reason) not compared.

    Example:
        >>> import unideploy
        >>> result = unideploy.compare("m.onnx", "m_int8.onnx", "images/", atol=0.05)  # doctest: +SKIP
        >>> bool(result), [c.describe() for c in result.failures]  # doctest: +SKIP
    """

    ref: str
    candidate: str
    source: str
    samples: int
    level: str
    task: str | None
    thresholds: Thresholds
    conf: float
    tensors: list[TensorStats] = field(default_factory=list)
    pairing: str | None = None
    detection: DetectionStats | None = None
    instances: TaskStats | None = None
    classification: ClassificationStats | None = None
    layers: Any = None
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    precision: str = "fp32"

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]

    def tensor(self, name: str) -> TensorStats:
        """Statistics of one output by (reference) name."""
        for t in self.tensors:
            if t.name == name or t.name.split("/")[0] == name:
                return t
        raise KeyError(f"no compared output named {name!r}; outputs: {[t.name for t in self.tensors]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable report."""
        return {
            "passed": self.passed,
            "ref": self.ref,
            "candidate": self.candidate,
            "source": self.source,
            "samples": self.samples,
            "level": self.level,
            "task": self.task,
            "conf": self.conf,
            "thresholds": asdict(self.thresholds),
            "precision": self.precision,
            "pairing": self.pairing,
            "tensors": [t.to_dict() for t in self.tensors],
            "detection": self.detection.to_dict() if self.detection else None,
            "instances": self.instances.to_dict() if self.instances else None,
            "classification": self.classification.to_dict() if self.classification else None,
            "layers": self.layers.to_dict() if self.layers is not None else None,
            "checks": [_json_safe(asdict(c)) for c in self.checks],
            "notes": list(self.notes),
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` atomically."""
        from unideploy.core.sinks import atomic_write_json

        atomic_write_json(path, self.to_dict())

    def table(self) -> str:
        """The human-readable report."""
        from unideploy.tools.compare.report import format_report

        return format_report(self)

    def __str__(self) -> str:
        return self.table()


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}
