"""The comparison loop: feed each image to both sides, accumulate statistics, then turn them into checks.

:class:`Comparison` holds the state of one run; :func:`run_comparison` drives it over the images. The entry point
that parses arguments and opens the two sides is :func:`unideploy.tools.compare.compare`.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from unideploy.core.errors import InputError, SourceError, UnideployError
from unideploy.core.options import PostprocessOptions
from unideploy.core.progress import progress_bar
from unideploy.core.results import Classifications, Detections
from unideploy.tools.compare.classification import ClassificationAccumulator
from unideploy.tools.compare.detections import DetectionAccumulator
from unideploy.tools.compare.result import Check, CompareResult, Thresholds, threshold_check
from unideploy.tools.compare.task_level import TaskAccumulator
from unideploy.tools.compare.tensors import TensorAccumulator, pair_outputs

__all__ = ["Comparison", "computes_in", "looser_precision", "run_comparison"]


#: precisions from tightest to loosest (int8: a model whose metadata says so, as ``unideploy quantize`` writes)
_LOOSENESS = ("fp32", "fp16", "bf16", "int8")


def computes_in(p: Any) -> str:
    """What an open predictor computes in: the looser of the runtime's own choice where it says (OpenVINO's bf16 /
    f16 hint) and the model file's precision (fp16, or int8 for a quantised model), else fp32."""
    from unideploy.core.precision import PRECISIONS

    chosen = PRECISIONS.get(str(p.session.compute_precision() or "").lower())
    stored = PRECISIONS.get(str(p.spec.extra.get("precision") or "").lower())
    known = [name for name in (chosen, stored) if name in _LOOSENESS]
    return max(known, key=_LOOSENESS.index) if known else "fp32"


def looser_precision(*predictors: Any) -> str:
    """The loosest :func:`computes_in` of ``predictors`` (what their comparison's tolerances must allow for)."""
    return max((computes_in(p) for p in predictors), key=_LOOSENESS.index, default="fp32")


def _reduced_precision(p: Any) -> str | None:
    """"bf16" / "f16" when an OpenVINO session computes float layers in reduced precision (best effort)."""
    name = p.session.compute_precision() if p.backend_name == "openvino" else None
    return name if name in ("bf16", "f16") else None


def _task_options(p: Any, conf: float) -> PostprocessOptions:
    """The predictor's postprocess options at the task level's lowered ``conf``, family defaults filled in."""
    return p.adapter.resolve_options(p.options.updated(conf=conf))


def _images(data: Any, random: bool, samples: int | None, shape: tuple[int, int], seed: int,
            skipped: list[tuple[str, str]], scales: tuple[Any, Any] = (None, None),
            ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, the reference's image, the candidate's image): the same array, except where a side decodes large
    JPEG files at a reduced scale (``fast_decode``; ``scales`` holds each side's ``decode_factor`` or None)."""
    if random:
        rng = np.random.default_rng(seed)
        h, w = shape
        for i in range(samples or 8):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            yield f"random{i:03d}", img, img
        return
    from unideploy.core.sources import read_image

    n = 0
    for item in data:
        if samples is not None and n >= samples:
            return
        try:
            img = item.load()
            path = getattr(item, "path", None)
            ref, cand = ((img if f is None or path is None else read_image(path, decode_scale=f)) for f in scales)
        except UnideployError as e:
            skipped.append((item.name, str(e)))
            continue
        n += 1
        yield item.name, ref, cand


def _same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


class Comparison:
    """One comparison in progress: :meth:`add` each image, then :meth:`finish` to write notes and checks.

    Args:
        ref_p, cand_p: the two open predictors.
        result: the :class:`CompareResult` being filled (its level, thresholds and notes are used).
        conf: the task level's confidence threshold; conf_low: the lower one both sides postprocess with
            (boxes between the two are matched but do not count as missed or extra).
        iou: lowest IoU for two boxes to be the same detection. worst: worst images to list.
    """

    def __init__(self, ref_p: Any, cand_p: Any, result: CompareResult, conf: float, conf_low: float, iou: float,
                 worst: int) -> None:
        self.ref_p, self.cand_p, self.result = ref_p, cand_p, result
        self.th: Thresholds = result.thresholds
        self.conf, self.conf_low = conf, conf_low
        self.do_tensor = result.level in ("all", "tensor")
        self.do_task = result.level in ("all", "task")
        self.pairing = pair_outputs(ref_p.session.outputs, cand_p.session.outputs)
        result.pairing = self.pairing.by if self.do_tensor else None
        self.accs = [TensorAccumulator(label, self.th.atol, self.th.rtol, self.th.rel_eps)
                     for _, _, label in self.pairing.pairs]
        self.shape_errors: dict[int, str] = {}
        self.tensor_input_error: str | None = None
        self.own_encoding = False  # the candidate takes the same letterboxed image in its own encoding (e.g. RKNN)
        self.det_acc = DetectionAccumulator(conf, iou, conf - conf_low, worst)
        self.cls_acc = ClassificationAccumulator()
        self.inst_acc = TaskAccumulator()
        self.unknown_result: str | None = None
        self.preprocess_differs = 0
        self.at_max_det = 0
        self.first_x: np.ndarray | None = None
        self.ref_opts = _task_options(ref_p, conf_low)
        self.cand_opts = _task_options(cand_p, conf_low)
        self._note_model_differences()

    def _note_model_differences(self) -> None:
        ref_p, cand_p, notes = self.ref_p, self.cand_p, self.result.notes
        if ref_p.task != cand_p.task:
            notes.append(f"the models do different tasks: reference {ref_p.task}, candidate {cand_p.task}")
        if ref_p.spec.names and cand_p.spec.names and ref_p.spec.names != cand_p.spec.names:
            notes.append("class names differ between the models (classes are matched by index)")
        if ref_p.spec.imgsz != cand_p.spec.imgsz:
            notes.append(f"input sizes differ: reference {ref_p.spec.imgsz}, candidate {cand_p.spec.imgsz}")
        for side, p, flag in (("reference", ref_p, "--ref-option"), ("candidate", cand_p, "--cand-option")):
            low = _reduced_precision(p)
            if low:
                notes.append(f"the {side} computes in {low} on openvino:{p.session.device} (the device's default "
                             f"here); for an FP32 comparison pass {flag} precision=f32 (Python: precision='f32' in "
                             f"its options)")

    # -- one image ------------------------------------------------------------------------------------
    def add(self, name: str, img: np.ndarray, cand_img: np.ndarray | None = None) -> None:
        """Feed one decoded image to both sides and update the statistics. ``cand_img``: the candidate's own
        decode of the same file where it differs (fast decode); the tensor level still gives both sides the
        reference's input, the task level gives each its own."""
        ref_p, cand_p = self.ref_p, self.cand_p
        own_img = img if cand_img is None else cand_img
        x, info = ref_p.preprocess(img)
        xb = x[None]
        if self.first_x is None:
            self.first_x = xb
        out_ref = ref_p.infer(xb)
        # the candidate's own preprocessing of this image, computed once: its input in its own encoding
        # (tensor level, see below) and the task level's input
        task = self.do_task and self.unknown_result is None
        xc, info_c = cand_p.preprocess(own_img) if self.own_encoding or task else (None, None)
        out_cand_same: list[np.ndarray] | None = None
        if self.do_tensor and self.tensor_input_error is None:
            out_cand_same, xc, info_c = self._candidate_same_input(img, xb, xc, info_c)
        if out_cand_same is not None:
            self._update_tensors(out_ref, out_cand_same)
        if task:
            differs = not _same_tensor(xc, x)
            self.preprocess_differs += differs
            # the tensor level's run is reused when it had this very input (the reference's, or, in the
            # candidate's own encoding, xc itself)
            if out_cand_same is not None and (self.own_encoding or not differs):
                out_cand = out_cand_same
            else:
                out_cand = cand_p.infer(xc[None])
            self._update_task(name, ref_p.adapter.postprocess(out_ref, [info], self.ref_opts)[0],
                              cand_p.adapter.postprocess(out_cand, [info_c], self.cand_opts)[0])
        self.result.samples += 1

    def _candidate_same_input(self, img: np.ndarray, xb: np.ndarray, xc: Any, info_c: Any) -> tuple[Any, Any, Any]:
        """The candidate's outputs on the reference's input (or, when it cannot take that, on the same letterboxed
        image in its own encoding); None when it can take neither. Returns (outputs, xc, info_c)."""
        ref_p, cand_p = self.ref_p, self.cand_p
        try:
            return cand_p.infer(xc[None] if self.own_encoding else xb), xc, info_c
        except InputError as e:
            # a model that takes the letterboxed image as uint8 NHWC with its normalisation inside
            # (RKNN, some OM/TensorRT builds) cannot take the float tensor; when both sides letterbox
            # the image identically, its own encoding of that same image is the same input
            same_image = not self.own_encoding and _same_tensor(ref_p.prepare(img)[0], cand_p.prepare(img)[0])
            if same_image and xc is None:
                xc, info_c = cand_p.preprocess(img)
            try:
                out = cand_p.infer(xc[None]) if same_image else None
            except InputError:
                out = None
            if out is None:
                self.tensor_input_error = (f"the candidate cannot take the reference's preprocessed input "
                                           f"{tuple(xb.shape)} {xb.dtype}: {e}")
            else:
                self.own_encoding = True
                self.result.notes.append(
                    f"tensor level: the candidate takes {tuple(xc[None].shape)} {xc.dtype}, not the reference's "
                    f"{tuple(xb.shape)} {xb.dtype}; both got the same letterboxed image, each in its own input "
                    f"encoding (normalisation per each model's spec)")
            return out, xc, info_c

    def _update_tensors(self, out_ref: list[np.ndarray], out_cand: list[np.ndarray]) -> None:
        for k, (i, j, _) in enumerate(self.pairing.pairs):
            if k in self.shape_errors:
                continue
            a, b = out_cand[j], out_ref[i]
            if a.shape != b.shape:
                self.shape_errors[k] = f"shape mismatch: reference {tuple(b.shape)}, candidate {tuple(a.shape)}"
                self.accs[k].shape, self.accs[k].cand_shape = tuple(b.shape), tuple(a.shape)
                continue
            self.accs[k].shape = self.accs[k].cand_shape = tuple(b.shape)
            self.accs[k].update(a, b)

    def _update_task(self, name: str, r: Any, c: Any) -> None:
        if isinstance(r, Detections) and isinstance(c, Detections):
            self.det_acc.update(name, r, c)
            self.inst_acc.update(r, c, self.det_acc.last_pairs)
            if len(r) >= self.ref_opts.max_det or len(c) >= self.cand_opts.max_det:
                self.at_max_det += 1
        elif isinstance(r, Classifications) and isinstance(c, Classifications):
            self.cls_acc.update(name, r, c)
        else:
            self.unknown_result = f"task level cannot compare {type(r).__name__} with {type(c).__name__}"

    def _instance_checks(self) -> None:
        if self.inst_acc.kind is None:
            return
        t = self.result.instances = self.inst_acc.result()
        self.result.checks.extend(_instance_check_list(t, self.th))
        if not t.pairs:
            self.result.notes.append(f"no matched {t.kind} instance: masks / keypoints / rotated boxes were not compared")

    # -- the verdict ----------------------------------------------------------------------------------
    def finish(self) -> None:
        """Write the notes and every threshold check into the result."""
        result, notes = self.result, self.result.notes
        if self.preprocess_differs:
            notes.append(f"the candidate preprocesses {self.preprocess_differs} of {result.samples} image(s) "
                         f"differently from the reference (task level uses each side's own preprocessing)")
        if self.at_max_det:
            notes.append(f"{self.at_max_det} image(s) reached max_det ({self.ref_opts.max_det}) boxes at conf "
                         f"{self.conf_low:g}: boxes ranked near that cut can show up as missed/extra (raise max_det "
                         f"to rule this out)")
        if result.skipped:
            notes.append(f"{len(result.skipped)} image(s) could not be read and were skipped")
        if self.do_tensor:
            self._tensor_checks()
        if self.do_task:
            self._task_checks()

    def _tensor_checks(self) -> None:
        result, checks, th = self.result, self.result.checks, self.th
        if self.tensor_input_error:
            checks.append(Check("tensor", "input", None, "", None, False, self.tensor_input_error))
            return
        for k, acc in enumerate(self.accs):
            stats = acc.result()
            if k in self.shape_errors:
                stats.error = self.shape_errors[k]
                stats.samples = 0
            result.tensors.append(stats)
            if stats.error:
                checks.append(Check("tensor", stats.name, None, "", None, False, stats.error))
                continue
            checks.append(threshold_check("tensor", f"{stats.name} cosine_min", stats.cosine_min, ">=", th.min_cosine))
            checks.append(threshold_check("tensor", f"{stats.name} fail_pct", stats.fail_pct, "<=", th.max_fail_pct))
        if self.pairing.by == "position":
            result.notes.append("output names differ; outputs were matched by position")
        for n in self.pairing.unmatched_ref:
            checks.append(Check("tensor", n, None, "", None, False, "reference output has no candidate output of that name"))
        for n in self.pairing.unmatched_cand:
            result.notes.append(f"candidate output {n!r} has no reference output of that name (not compared)")

    def _task_checks(self) -> None:
        result, checks, th = self.result, self.result.checks, self.th
        if self.unknown_result:
            checks.append(Check("task", "result type", None, "", None, False, self.unknown_result))
        elif self.det_acc.images:
            d = result.detection = self.det_acc.result()
            checks.append(threshold_check("detect", "missed_frac", d.missed_frac, "<=", th.max_missed_frac))
            checks.append(threshold_check("detect", "extra_frac", d.extra_frac, "<=", th.max_extra_frac))
            checks.append(threshold_check("detect", "score_delta_max", d.score_delta_max, "<=", th.max_score_delta))
            checks.append(threshold_check("detect", "shift_px_max", d.shift_px_max, "<=", th.max_shift_px))
            self._instance_checks()
            if not d.ref_boxes:
                result.notes.append(f"the reference found no box above conf {self.conf} in any image: the detection "
                                    f"level checked nothing but extras (lower --conf or use real images)")
        elif self.cls_acc.count:
            c = result.classification = self.cls_acc.result()
            checks.append(threshold_check("classify", "top1_agreement", c.top1_agreement, ">=", th.min_top1_agreement))
            checks.append(threshold_check("classify", "prob_delta_max", c.prob_delta_max, "<=", th.max_prob_delta))


def _instance_check_list(t, th: Thresholds) -> list[Check]:
    """The checks of the task's own part of matched instances (none when nothing was measured)."""
    specs = {"segment": [("mask_iou_mean", t.mask_iou_mean, ">=", th.min_mask_iou),
                         ("mask_iou_p5", t.mask_iou_p5, ">=", th.min_mask_iou_p5)],
             "pose": [("kpt_px_max", t.kpt_px_max, "<=", th.max_kpt_px), ("oks_mean", t.oks_mean, ">=", th.min_oks)],
             "obb": [("rotated_iou_mean", t.rotated_iou_mean, ">=", th.min_rotated_iou),
                     ("angle_deg_max", t.angle_deg_max, "<=", th.max_angle_deg)]}
    return [threshold_check(t.kind, name, value, op, limit) for name, value, op, limit in specs.get(t.kind, [])
            if value is not None]


def run_comparison(ref_p: Any, cand_p: Any, ref_label: str, cand_label: str, data: Any, *, samples: int | None,
                   random: bool, seed: int, level: str, conf: float, conf_low: float, iou: float, th: Thresholds,
                   layers: bool, worst: int, progress: bool,
                   backend_opts: tuple[dict[str, Any], dict[str, Any]] = ({}, {})) -> CompareResult:
    """Compare two open predictors on ``data`` (or random images) and return the filled :class:`CompareResult`.

    Raises:
        SourceError: no image of ``data`` could be read.
    """
    task = ref_p.task if ref_p.task == cand_p.task else None
    label = "random" if random else (f"{len(data)} listed image(s)" if isinstance(data, (list, tuple)) else str(data))
    result = CompareResult(ref_label, cand_label, label, 0, level, task, th, conf,
                           precision=looser_precision(ref_p, cand_p))
    run = Comparison(ref_p, cand_p, result, conf, conf_low, iou, worst)
    if random:
        total = samples or 8
    else:
        from unideploy.core.sources import Source

        data = data if isinstance(data, Source) else Source(data)  # fails here when it names nothing
        total = len(data) if samples is None else min(samples, len(data))
    with progress_bar(total, "compare", enabled=progress, leave=False) as bar:
        scales = tuple(p.adapter.decode_factor if getattr(p, "fast_decode", False) else None for p in (ref_p, cand_p))
        for side, f in zip(("reference", "candidate"), scales):
            if f is not None and not random:
                result.notes.append(f"the {side} decodes large JPEG files at a reduced scale (fast_decode): the task "
                                    "level includes what that changes; the tensor level feeds both the reference's "
                                    "input")
        for name, img, cand_img in _images(data, random, samples, ref_p.spec.imgsz, seed, result.skipped, scales):
            run.add(name, img, None if cand_img is img else cand_img)
            bar.update(1)
    if not result.samples:
        why = "; ".join(f"{n}: {r}" for n, r in result.skipped[:3])
        raise SourceError(f"{data}: expected readable images, none could be read ({why})")
    run.finish()
    if layers and run.first_x is not None:
        from unideploy.tools.compare.layers import compare_layers

        result.layers = compare_layers(ref_p, cand_p, run.first_x, th, *backend_opts)
    return result
