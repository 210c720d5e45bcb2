"""``compare``: run a reference and a candidate deployment on the same inputs and check they agree.

Two levels, each with its own thresholds:

* **tensor** — the reference adapter preprocesses each image once and the *same* tensor is fed to both
  sessions; raw outputs are matched by name (by position when the names differ but the counts agree)
  and compared element by element (:mod:`.tensors`);
* **task** — each side postprocesses its own outputs with its own adapter (and its own preprocessing
  when it differs from the reference's) and the results are compared: detections by one-to-one
  matching (:mod:`.detections`), classifications by top-k agreement (:mod:`.classification`).

The result is a :class:`CompareResult` whose truth value is pass/fail, with a table and a JSON form.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError, SourceError, UnideployError
from ..results import Classifications, Detections
from .classification import ClassificationAccumulator, ClassificationStats
from .detections import DetectionAccumulator, DetectionStats
from .tensors import TensorAccumulator, TensorStats, pair_outputs

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
    from ..backends.registry import ALIASES, list_backends

    s = os.fspath(text)
    if "@" not in s or Path(s).exists():
        return Target(s)
    model, _, rest = s.rpartition("@")
    name, _, device = rest.partition(":")
    known = set(list_backends()) | set(ALIASES)
    if not model or name.lower() not in known:
        raise InputError(
            f"{s!r}: expected MODEL[@backend[:device]] with backend one of {', '.join(list_backends())}; "
            f"got backend {name!r}"
        )
    return Target(model, ALIASES.get(name.lower(), name.lower()), device or None)


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

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or not np.isfinite(float(v)) or float(v) < 0:
                raise InputError(f"threshold {f.name} must be a number >= 0, got {v!r}")
            setattr(self, f.name, float(v))


@dataclass
class Check:
    """One threshold test: ``value op limit`` (op is ">=" or "<=") at a level ("tensor", "detect", "classify")."""

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


def _check(level: str, name: str, value: float, op: str, limit: float) -> Check:
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
        tensors: one :class:`TensorStats` per matched output. pairing: "name", "position" or "partial".
        detection / classification: task-level statistics (None when not run).
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
    classification: ClassificationStats | None = None
    layers: Any = None
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

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
            "pairing": self.pairing,
            "tensors": [t.to_dict() for t in self.tensors],
            "detection": self.detection.to_dict() if self.detection else None,
            "classification": self.classification.to_dict() if self.classification else None,
            "layers": self.layers.to_dict() if self.layers is not None else None,
            "checks": [_json_safe(asdict(c)) for c in self.checks],
            "notes": list(self.notes),
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` atomically."""
        from ..sinks import atomic_write_json

        atomic_write_json(path, self.to_dict())

    def table(self) -> str:
        """The human-readable report."""
        from .report import format_report

        return format_report(self)

    def __str__(self) -> str:
        return self.table()


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


# -- running -------------------------------------------------------------------------------------------
def _backend_options(options: dict[str, Any]) -> dict[str, Any]:
    """The part of ``load`` keyword arguments that Predictor passes on to ``Backend.open``."""
    import inspect

    from ..pipeline import Predictor

    named = set(inspect.signature(Predictor.__init__).parameters)
    return {k: v for k, v in options.items() if k not in named}


def _open(side: Any, options: dict[str, Any]) -> tuple[Any, str, bool, dict[str, Any]]:
    """(predictor, label, owned, backend options): a Predictor is used as given; anything else is parsed and loaded."""
    from ..pipeline import Predictor, load

    if isinstance(side, Predictor):
        label = f"{side.path}@{side.backend_name}:{side.session.device}"
        return side, label, False, dict(getattr(side, "backend_options", None) or {})
    t = parse_target(side)
    p = load(t.model, t.backend, t.device, **options)
    return p, f"{t.model}@{p.backend_name}:{p.session.device}", True, _backend_options(options)


def _reduced_precision(p: Any) -> str | None:
    """"bf16" / "f16" when an OpenVINO session computes float layers in reduced precision (best effort)."""
    name = p.session.compute_precision() if p.backend_name == "openvino" else None
    return name if name in ("bf16", "f16") else None


def _images(data: Any, random: bool, samples: int | None, shape: tuple[int, int], seed: int,
            skipped: list[tuple[str, str]]) -> Iterator[tuple[str, np.ndarray]]:
    if random:
        rng = np.random.default_rng(seed)
        h, w = shape
        for i in range(samples or 8):
            yield f"random{i:03d}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        return
    src = data
    n = 0
    for item in src:
        if samples is not None and n >= samples:
            return
        try:
            img = item.load()
        except UnideployError as e:
            skipped.append((item.name, str(e)))
            continue
        n += 1
        yield item.name, img


def _same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def compare(
    ref: Any,
    candidate: Any,
    data: Any = None,
    *,
    samples: int | None = None,
    random: bool = False,
    seed: int = 0,
    level: str = "all",
    conf: float = 0.25,
    iou: float = 0.5,
    nms_iou: float = 0.7,
    max_det: int = 300,
    thresholds: Thresholds | None = None,
    layers: bool = False,
    worst: int = 5,
    options: dict[str, Any] | None = None,
    ref_options: dict[str, Any] | None = None,
    cand_options: dict[str, Any] | None = None,
    progress: bool = False,
    **limits: float,
) -> CompareResult:
    """Compare a candidate deployment of a model against a reference, at the tensor and the task level.

    Args:
        ref, candidate: ``"MODEL[@backend[:device]]"`` strings (e.g. ``"m.onnx@onnxruntime"``,
            ``"m_int8.xml@openvino:CPU"``), paths, or open :class:`~unideploy.Predictor` objects (left open).
        data: image file, folder, glob or video (anything :class:`~unideploy.sources.Source` takes).
        samples: compare at most this many images (default: all; 8 with ``random``).
        random: feed random-noise images of the reference input size instead of ``data``.
        seed: seed of the random images.
        level: "all", "tensor" (raw outputs only) or "task" (detections / classifications only).
        conf: confidence threshold of the task level (the one a deployment would use).
        iou: lowest IoU for two boxes to count as the same detection.
        nms_iou, max_det: NMS settings of the models being loaded.
        thresholds: pass/fail limits; or give single limits as keywords (``atol=0.05``, ``max_shift_px=8``).
        layers: also locate the first diverging intermediate tensor (ONNX models; needs the ``onnx`` package).
        worst: how many worst images to list.
        options: keyword arguments for :func:`unideploy.load` of both sides (``imgsz``, ``threads``, ...);
            ref_options / cand_options: for one side only.
        progress: show a progress bar on stderr.

    Returns:
        A :class:`CompareResult`; ``bool(result)`` is True when every check passed.

    Raises:
        InputError: bad arguments or thresholds. SourceError: ``data`` yields no readable image.

    Example:
        >>> import unideploy
        >>> r = unideploy.compare("yolov8n.onnx@onnxruntime", "yolov8n_openvino_model@openvino:CPU",
        ...                       "images/", samples=20)  # doctest: +SKIP
        >>> print(r.table()); assert r  # doctest: +SKIP
    """
    if level not in LEVELS:
        raise InputError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    if random and data is not None:
        raise InputError("give either data (images) or random=True (--random), not both")
    if not random and data is None:
        raise InputError("nothing to feed: give data (an image, folder, glob or video) or random=True (--random)")
    if samples is not None and int(samples) < 1:
        raise InputError(f"samples must be a positive integer, got {samples}")
    for name, v in (("conf", conf), ("iou", iou), ("nms_iou", nms_iou)):
        if not 0.0 <= float(v) <= 1.0:
            raise InputError(f"{name} must be between 0 and 1, got {v}")
    known = {f.name for f in fields(Thresholds)}
    unknown = sorted(set(limits) - known)
    if unknown:
        raise InputError(f"unknown threshold(s) {unknown}; valid: {', '.join(sorted(known))}")
    th = Thresholds(**{**(asdict(thresholds) if thresholds else {}), **limits})
    margin = min(th.max_score_delta, conf)
    conf_low = max(0.0, conf - margin)

    base = {"conf": conf_low, "iou": nms_iou, "max_det": max_det, **(options or {})}
    ref_p, ref_label, own_ref, ref_backend_opts = _open(ref, {**base, **(ref_options or {})})
    try:
        cand_p, cand_label, own_cand, cand_backend_opts = _open(candidate, {**base, **(cand_options or {})})
    except BaseException:
        if own_ref:
            ref_p.close()
        raise
    try:
        return _run(ref_p, cand_p, ref_label, cand_label, data, samples, random, seed, level, conf, conf_low, iou,
                    th, layers, worst, progress, (ref_backend_opts, cand_backend_opts))
    finally:
        if own_cand:
            cand_p.close()
        if own_ref:
            ref_p.close()


def _run(ref_p: Any, cand_p: Any, ref_label: str, cand_label: str, data: Any, samples: int | None, random: bool,
         seed: int, level: str, conf: float, conf_low: float, iou: float, th: Thresholds, layers: bool, worst: int,
         progress: bool, backend_opts: tuple[dict[str, Any], dict[str, Any]] = ({}, {})) -> CompareResult:
    do_tensor = level in ("all", "tensor")
    do_task = level in ("all", "task")
    task = ref_p.task if ref_p.task == cand_p.task else None
    label = "random" if random else (f"{len(data)} listed image(s)" if isinstance(data, (list, tuple)) else str(data))
    result = CompareResult(ref_label, cand_label, label, 0, level, task, th, conf)
    notes = result.notes
    if ref_p.task != cand_p.task:
        notes.append(f"the models do different tasks: reference {ref_p.task}, candidate {cand_p.task}")
    if ref_p.spec.names and cand_p.spec.names and ref_p.spec.names != cand_p.spec.names:
        notes.append("class names differ between the models (classes are matched by index)")
    if ref_p.spec.imgsz != cand_p.spec.imgsz:
        notes.append(f"input sizes differ: reference {ref_p.spec.imgsz}, candidate {cand_p.spec.imgsz}")

    for side, p, flag in (("reference", ref_p, "--ref-option"), ("candidate", cand_p, "--cand-option")):
        low = _reduced_precision(p)
        if low:
            notes.append(f"the {side} computes in {low} on openvino:{p.session.device} (the device's default here); "
                         f"for an FP32 comparison pass {flag} precision=f32 (Python: precision='f32' in its options)")
    pairing = pair_outputs(ref_p.session.outputs, cand_p.session.outputs)
    result.pairing = pairing.by if do_tensor else None
    accs = [TensorAccumulator(label, th.atol, th.rtol, th.rel_eps) for _, _, label in pairing.pairs]
    shape_errors: dict[int, str] = {}
    tensor_input_error: str | None = None
    own_encoding = False  # the candidate takes the same letterboxed image in its own input encoding (e.g. RKNN)
    det_acc = DetectionAccumulator(conf, iou, conf - conf_low, worst)
    cls_acc = ClassificationAccumulator()
    unknown_result: str | None = None
    preprocess_differs = 0
    at_max_det = 0
    first_x: np.ndarray | None = None
    ref_opts = {**ref_p.options, "conf": conf_low}
    cand_opts = {**cand_p.options, "conf": conf_low}

    if random:
        total = samples or 8
    else:
        from ..sources import Source

        data = data if isinstance(data, Source) else Source(data)  # fails here when it names nothing
        total = len(data) if samples is None else min(samples, len(data))
    images = _images(data, random, samples, ref_p.spec.imgsz, seed, result.skipped)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="img", desc="compare", total=total, leave=False, dynamic_ncols=True)
    try:
        for name, img in images:
            x, info = ref_p.preprocess(img)
            xb = x[None]
            if first_x is None:
                first_x = xb
            out_ref = ref_p.infer(xb)
            # the candidate's own preprocessing of this image, computed once: its input in its own encoding
            # (tensor level, see below) and the task level's input
            task = do_task and unknown_result is None
            xc, info_c = cand_p.preprocess(img) if own_encoding or task else (None, None)
            out_cand_same: list[np.ndarray] | None = None
            if do_tensor and tensor_input_error is None:
                try:
                    out_cand_same = cand_p.infer(xc[None] if own_encoding else xb)
                except InputError as e:
                    # a model that takes the letterboxed image as uint8 NHWC with its normalisation inside
                    # (RKNN, some OM/TensorRT builds) cannot take the float tensor; when both sides letterbox
                    # the image identically, its own encoding of that same image is the same input
                    same_image = not own_encoding and _same_tensor(ref_p.prepare(img)[0], cand_p.prepare(img)[0])
                    if same_image and xc is None:
                        xc, info_c = cand_p.preprocess(img)
                    try:
                        out_cand_same = cand_p.infer(xc[None]) if same_image else None
                    except InputError:
                        out_cand_same = None
                    if out_cand_same is None:
                        tensor_input_error = (f"the candidate cannot take the reference's preprocessed input "
                                              f"{tuple(xb.shape)} {xb.dtype}: {e}")
                    else:
                        own_encoding = True
                        notes.append(f"tensor level: the candidate takes {tuple(xc[None].shape)} {xc.dtype}, not the "
                                     f"reference's {tuple(xb.shape)} {xb.dtype}; both got the same letterboxed image, "
                                     f"each in its own input encoding (normalisation per each model's spec)")
            if out_cand_same is not None:
                for k, (i, j, _) in enumerate(pairing.pairs):
                    if k in shape_errors:
                        continue
                    a, b = out_cand_same[j], out_ref[i]
                    if a.shape != b.shape:
                        shape_errors[k] = f"shape mismatch: reference {tuple(b.shape)}, candidate {tuple(a.shape)}"
                        accs[k].shape, accs[k].cand_shape = tuple(b.shape), tuple(a.shape)
                        continue
                    accs[k].shape = accs[k].cand_shape = tuple(b.shape)
                    accs[k].update(a, b)
            if task:
                differs = not _same_tensor(xc, x)
                preprocess_differs += differs
                # the tensor level's run is reused when it had this very input (the reference's, or, in the
                # candidate's own encoding, xc itself)
                if out_cand_same is not None and (own_encoding or not differs):
                    out_cand = out_cand_same
                else:
                    out_cand = cand_p.infer(xc[None])
                r = ref_p.adapter.postprocess(out_ref, [info], **ref_opts)[0]
                c = cand_p.adapter.postprocess(out_cand, [info_c], **cand_opts)[0]
                if isinstance(r, Detections) and isinstance(c, Detections):
                    det_acc.update(name, r, c)
                    if len(r) >= ref_opts.get("max_det", 1 << 30) or len(c) >= cand_opts.get("max_det", 1 << 30):
                        at_max_det += 1
                elif isinstance(r, Classifications) and isinstance(c, Classifications):
                    cls_acc.update(name, r, c)
                else:
                    unknown_result = f"task level cannot compare {type(r).__name__} with {type(c).__name__}"
            result.samples += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not result.samples:
        why = "; ".join(f"{n}: {r}" for n, r in result.skipped[:3])
        raise SourceError(f"{data}: expected readable images, none could be read ({why})")
    if preprocess_differs:
        notes.append(f"the candidate preprocesses {preprocess_differs} of {result.samples} image(s) differently "
                     f"from the reference (task level uses each side's own preprocessing)")
    if at_max_det:
        notes.append(f"{at_max_det} image(s) reached max_det ({ref_opts.get('max_det')}) boxes at conf {conf_low:g}: "
                     f"boxes ranked near that cut can show up as missed/extra (raise max_det to rule this out)")
    if result.skipped:
        notes.append(f"{len(result.skipped)} image(s) could not be read and were skipped")

    checks = result.checks
    if do_tensor:
        if tensor_input_error:
            checks.append(Check("tensor", "input", None, "", None, False, tensor_input_error))
        else:
            for k, acc in enumerate(accs):
                stats = acc.result()
                if k in shape_errors:
                    stats.error = shape_errors[k]
                    stats.samples = 0
                result.tensors.append(stats)
                if stats.error:
                    checks.append(Check("tensor", stats.name, None, "", None, False, stats.error))
                    continue
                checks.append(_check("tensor", f"{stats.name} cosine_min", stats.cosine_min, ">=", th.min_cosine))
                checks.append(_check("tensor", f"{stats.name} fail_pct", stats.fail_pct, "<=", th.max_fail_pct))
            if pairing.by == "position":
                notes.append("output names differ; outputs were matched by position")
            for n in pairing.unmatched_ref:
                checks.append(Check("tensor", n, None, "", None, False,
                                    "reference output has no candidate output of that name"))
            for n in pairing.unmatched_cand:
                notes.append(f"candidate output {n!r} has no reference output of that name (not compared)")
    if do_task:
        if unknown_result:
            checks.append(Check("task", "result type", None, "", None, False, unknown_result))
        elif det_acc.images:
            d = result.detection = det_acc.result()
            checks.append(_check("detect", "missed_frac", d.missed_frac, "<=", th.max_missed_frac))
            checks.append(_check("detect", "extra_frac", d.extra_frac, "<=", th.max_extra_frac))
            checks.append(_check("detect", "score_delta_max", d.score_delta_max, "<=", th.max_score_delta))
            checks.append(_check("detect", "shift_px_max", d.shift_px_max, "<=", th.max_shift_px))
            if not d.ref_boxes:
                notes.append(f"the reference found no box above conf {conf} in any image: the detection level "
                             f"checked nothing but extras (lower --conf or use real images)")
        elif cls_acc.count:
            c = result.classification = cls_acc.result()
            checks.append(_check("classify", "top1_agreement", c.top1_agreement, ">=", th.min_top1_agreement))
            checks.append(_check("classify", "prob_delta_max", c.prob_delta_max, "<=", th.max_prob_delta))
    if layers and first_x is not None:
        from .layers import compare_layers

        result.layers = compare_layers(ref_p, cand_p, first_x, th, *backend_opts)
    return result

