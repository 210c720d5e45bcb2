"""``compare``: run a reference and a candidate deployment on the same inputs and check they agree.

Two levels, each with its own thresholds:

* **tensor** — the reference adapter preprocesses each image once and the *same* tensor is fed to both
  sessions; raw outputs are matched by name (by position when the names differ but the counts agree)
  and compared element by element (:mod:`.tensors`);
* **task** — each side postprocesses its own outputs with its own adapter (and its own preprocessing
  when it differs from the reference's) and the results are compared: detections by one-to-one
  matching (:mod:`.detections`), classifications by top-k agreement (:mod:`.classification`).

The result is a :class:`~unideploy.tools.compare.result.CompareResult` whose truth value is pass/fail, with a table
and a JSON form. Each side is opened with :func:`unideploy.load` (so through
:func:`unideploy.runtime.open.open_model`); the loop itself is :mod:`.run`.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from unideploy.core.errors import InputError
from unideploy.core.options import check_fraction, check_positive_int
from unideploy.tools.compare.result import LEVELS, CompareResult, Thresholds, parse_target
from unideploy.tools.compare.run import run_comparison

__all__ = ["compare"]


def _backend_options(options: dict[str, Any]) -> dict[str, Any]:
    """The part of ``load`` keyword arguments that Predictor passes on to ``Backend.open``."""
    import inspect

    from unideploy.runtime.predictor import Predictor

    named = set(inspect.signature(Predictor.__init__).parameters)
    return {k: v for k, v in options.items() if k not in named}


def _open(side: Any, options: dict[str, Any]) -> tuple[Any, str, bool, dict[str, Any]]:
    """(predictor, label, owned, backend options): a Predictor is used as given; anything else is parsed and loaded."""
    from unideploy.runtime.load import load
    from unideploy.runtime.predictor import Predictor

    if isinstance(side, Predictor):
        label = f"{side.path}@{side.backend_name}:{side.session.device}"
        return side, label, False, dict(getattr(side, "backend_options", None) or {})
    t = parse_target(side)
    p = load(t.model, t.backend, t.device, **options)
    return p, f"{t.model}@{p.backend_name}:{p.session.device}", True, _backend_options(options)


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
    nms_iou: float | None = None,
    max_det: int | None = None,
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
        data: image file, folder, glob or video (anything :class:`~unideploy.core.sources.Source` takes).
        samples: compare at most this many images (default: all; 8 with ``random``).
        random: feed random-noise images of the reference input size instead of ``data``.
        seed: seed of the random images.
        level: "all", "tensor" (raw outputs only) or "task" (detections / classifications only).
        conf: confidence threshold of the task level (the one a deployment would use).
        iou: lowest IoU for two boxes to count as the same detection.
        nms_iou, max_det: NMS settings of the models being loaded (None: each model family's default, as for
            :func:`unideploy.load`).
        thresholds: pass/fail limits, used as given; or give single limits as keywords (``atol=0.05``,
            ``max_shift_px=8``). Without ``thresholds`` the tensor-level atol / rtol follow the precision the looser
            side computes in (fp32 1e-3, fp16 1e-2, bf16 5e-2: OpenVINO's bf16 on CPUs with native bf16; int8 0.1
            with looser fail %, score and shift limits, see ``result.TENSOR_LIMITS``), and the keywords override them.
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
    samples = None if samples is None else check_positive_int(samples, "samples")
    conf, iou = check_fraction(conf, "conf"), check_fraction(iou, "iou")
    nms_iou = None if nms_iou is None else check_fraction(nms_iou, "nms_iou")
    known = {f.name for f in fields(Thresholds)}
    unknown = sorted(set(limits) - known)
    if unknown:
        raise InputError(f"unknown threshold(s) {unknown}; valid: {', '.join(sorted(known))}")
    th = Thresholds(**{**(asdict(thresholds) if thresholds else {}), **limits})
    given_limits = dict(limits)
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
    if thresholds is None:  # tensor limits follow the precision the models compute in, unless set
        from unideploy.tools.compare.result import thresholds_for
        from unideploy.tools.compare.run import looser_precision

        th = thresholds_for(looser_precision(ref_p, cand_p), **given_limits)
    try:
        return run_comparison(ref_p, cand_p, ref_label, cand_label, data, samples=samples, random=random, seed=seed,
                              level=level, conf=conf, conf_low=conf_low, iou=iou, th=th, layers=layers, worst=worst,
                              progress=progress, backend_opts=(ref_backend_opts, cand_backend_opts))
    finally:
        if own_cand:
            cand_p.close()
        if own_ref:
            ref_p.close()
