"""Detection-level comparison: one-to-one matching of candidate boxes to reference boxes.

Boxes are matched greedily: reference boxes in descending score order each take the unmatched
candidate box of the same class with the highest IoU, if that IoU is at least ``iou``. Greedy matching
is deterministic and, for the near-identical box sets a comparison sees, gives the same pairs as an
optimal (Hungarian) assignment.

Scores near the confidence threshold need care: a box scoring 0.251 in the reference and 0.249 in the
candidate is the same box, not a missed one. Both sides are therefore postprocessed at a lower
threshold (``conf - margin``) and matched there; a box counts as *missed* only when it scores above
``conf`` in the reference and the candidate has no match for it even at the lower threshold, and as
*extra* in the mirror case. A matched pair whose score crossed the threshold still shows its score
delta, which ``max_score_delta`` bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unideploy.core.ops.boxes import box_iou
from unideploy.core.results import Detections


def _at_least(xyxy: np.ndarray, size: float = 1.0) -> np.ndarray:
    """Boxes widened / heightened about their centre to at least ``size`` px, so that degenerate boxes
    (zero width or height, e.g. clipped at the image border) still have a meaningful IoU."""
    b = np.asarray(xyxy, np.float64).reshape(-1, 4).copy()
    for lo, hi in ((0, 2), (1, 3)):
        centre = (b[:, lo] + b[:, hi]) / 2
        half = np.maximum((b[:, hi] - b[:, lo]) / 2, size / 2)
        b[:, lo], b[:, hi] = centre - half, centre + half
    return b


def match_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix used for matching: boxes narrower than 1 px count as 1 px wide (see ``_at_least``).

    Example:
        >>> import numpy as np
        >>> float(match_iou(np.array([[5, 0, 5, 10]]), np.array([[5, 0, 5, 10]]))[0, 0])
        1.0
    """
    return box_iou(_at_least(a), _at_least(b))


def match_detections(ref: Detections, cand: Detections, iou: float = 0.5,
                     class_aware: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of two detection sets by class and IoU (see :func:`match_iou`).

    Args:
        ref: reference detections. cand: candidate detections (same image).
        iou: lowest IoU for a match.
        class_aware: only boxes of the same class match.

    Returns:
        ``(pairs, unmatched_ref, unmatched_cand)``: pairs is an int array (K, 2) of (ref index, cand index);
        the others are index arrays.

    Example:
        >>> import numpy as np
        >>> r = Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0.9, 0.8]), np.array([0, 1]))
        >>> c = Detections(np.array([[1, 0, 11, 10]]), np.array([0.85]), np.array([0]))
        >>> pairs, missed, extra = match_detections(r, c)
        >>> pairs.tolist(), missed.tolist(), extra.tolist()
        ([[0, 0]], [1], [])
    """
    nr, nc = len(ref), len(cand)
    if not nr or not nc:
        return np.zeros((0, 2), np.int64), np.arange(nr), np.arange(nc)
    ious = match_iou(ref.xyxy, cand.xyxy)
    ok = ious >= iou
    if class_aware:
        ok &= ref.class_id[:, None] == cand.class_id[None, :]
    score = np.where(ok, ious, -1.0)
    used = np.zeros(nc, bool)
    pairs = []
    for i in np.argsort(-ref.confidence, kind="stable"):
        row = np.where(used, -1.0, score[i])
        j = int(np.argmax(row))
        if row[j] >= 0:
            used[j] = True
            pairs.append((int(i), j))
    pairs_arr = np.array(pairs, np.int64).reshape(-1, 2)
    matched_ref = np.zeros(nr, bool)
    matched_ref[pairs_arr[:, 0]] = True
    return pairs_arr, np.flatnonzero(~matched_ref), np.flatnonzero(~used)


@dataclass
class ImageDiff:
    """Differences found in one image.

    Attributes:
        name: image name. ref_boxes / cand_boxes: boxes above ``conf`` on each side.
        matched, crossed_down, crossed_up, missed, extra: counts (see :class:`DetectionStats`).
        max_shift_px / max_score_delta: worst matched or crossed pair.
        missed_boxes / extra_boxes: the unmatched boxes (xyxy, confidence, class_id, name).
    """

    name: str
    ref_boxes: int = 0
    cand_boxes: int = 0
    matched: int = 0
    crossed_down: int = 0
    crossed_up: int = 0
    missed: int = 0
    extra: int = 0
    max_shift_px: float = 0.0
    max_score_delta: float = 0.0
    missed_boxes: list[dict] = field(default_factory=list)
    extra_boxes: list[dict] = field(default_factory=list)

    @property
    def badness(self) -> tuple[int, float, float]:
        """Sort key for the worst-images list: unmatched boxes, then score delta, then shift."""
        return (self.missed + self.extra + self.crossed_down + self.crossed_up, self.max_score_delta, self.max_shift_px)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DetectionStats:
    """Detection-level comparison over all images.

    Attributes:
        images: images compared. ref_boxes / cand_boxes: boxes above ``conf`` on each side.
        matched: pairs of boxes (same class, IoU >= ``iou``) above ``conf`` on both sides.
        crossed_down: reference boxes above ``conf`` whose candidate match scores just below it (within ``margin``);
        crossed_up: the mirror case. missed: reference boxes above ``conf`` with no candidate match;
        extra: candidate boxes above ``conf`` with no reference match. So
        ``ref_boxes = matched + crossed_down + missed`` and ``cand_boxes = matched + crossed_up + extra``.
        missed_frac = missed / ref_boxes; extra_frac = extra / cand_boxes.
        mean_iou: mean IoU of matched and crossed pairs.
        shift_px_mean / shift_px_max: largest corner displacement of a pair, in original-image pixels.
        score_delta_mean / score_delta_max: |candidate score - reference score| of a pair.
        conf, iou, margin: the settings used. worst: the worst images, worst first.
    """

    images: int = 0
    ref_boxes: int = 0
    cand_boxes: int = 0
    matched: int = 0
    crossed_down: int = 0
    crossed_up: int = 0
    missed: int = 0
    extra: int = 0
    missed_frac: float = 0.0
    extra_frac: float = 0.0
    mean_iou: float = float("nan")
    shift_px_mean: float = 0.0
    shift_px_max: float = 0.0
    score_delta_mean: float = 0.0
    score_delta_max: float = 0.0
    conf: float = 0.25
    iou: float = 0.5
    margin: float = 0.0
    worst: list[ImageDiff] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "worst"}
        d = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}
        d["worst"] = [w.to_dict() for w in self.worst]
        return d


def _box_dict(det: Detections, i: int) -> dict:
    return {"xyxy": [round(float(v), 2) for v in det.xyxy[i]], "confidence": round(float(det.confidence[i]), 5),
            "class_id": int(det.class_id[i]), "name": det.class_names[i]}


class DetectionAccumulator:
    """Accumulates detection differences image by image.

    Args:
        conf: confidence threshold a deployment would use.
        iou: lowest IoU for two boxes to be the same detection.
        margin: both sides must have been postprocessed at ``conf - margin`` (see the module docstring).
        worst: how many worst images to keep.

    Example:
        >>> import numpy as np
        >>> acc = DetectionAccumulator(conf=0.25, iou=0.5)
        >>> r = Detections(np.array([[0, 0, 10, 10]]), np.array([0.9]), np.array([0]))
        >>> acc.update("a.jpg", r, Detections.empty()).missed
        1
        >>> acc.result().missed
        1
    """

    def __init__(self, conf: float = 0.25, iou: float = 0.5, margin: float = 0.0, worst: int = 5) -> None:
        self.conf, self.iou, self.margin, self.n_worst = float(conf), float(iou), float(margin), int(worst)
        self.images: list[ImageDiff] = []
        self._shift: list[np.ndarray] = []
        self._delta: list[np.ndarray] = []
        self._iou: list[np.ndarray] = []
        self.last_pairs = np.zeros((0, 2), np.int64)

    def update(self, name: str, ref: Detections, cand: Detections) -> ImageDiff:
        """Compare one image's detections; returns its differences."""
        pairs, un_ref, un_cand = match_detections(ref, cand, self.iou)
        r_above = ref.confidence > self.conf
        c_above = cand.confidence > self.conf
        if len(pairs):  # a pair counts when at least one side is above the threshold
            pairs = pairs[r_above[pairs[:, 0]] | c_above[pairs[:, 1]]]
        pr, pc = r_above[pairs[:, 0]], c_above[pairs[:, 1]]
        self.last_pairs = pairs  # the pairs counted for this image, for the task level (masks, keypoints, ...)
        missed = un_ref[r_above[un_ref]]
        extra = un_cand[c_above[un_cand]]
        diff = ImageDiff(name, int(r_above.sum()), int(c_above.sum()), int((pr & pc).sum()), int((pr & ~pc).sum()),
                         int((~pr & pc).sum()), len(missed), len(extra))
        if len(pairs):
            shift = np.abs(ref.xyxy[pairs[:, 0]] - cand.xyxy[pairs[:, 1]]).max(1).astype(np.float64)
            delta = np.abs(ref.confidence[pairs[:, 0]] - cand.confidence[pairs[:, 1]]).astype(np.float64)
            ious = match_iou(ref.xyxy[pairs[:, 0]], cand.xyxy[pairs[:, 1]]).diagonal()
            diff.max_shift_px, diff.max_score_delta = float(shift.max()), float(delta.max())
            self._shift.append(shift)
            self._delta.append(delta)
            self._iou.append(ious)
        diff.missed_boxes = [_box_dict(ref, int(i)) for i in missed]
        diff.extra_boxes = [_box_dict(cand, int(i)) for i in extra]
        self.images.append(diff)
        return diff

    def result(self) -> DetectionStats:
        """The statistics so far."""
        s = DetectionStats(conf=self.conf, iou=self.iou, margin=self.margin, images=len(self.images))
        for d in self.images:
            s.ref_boxes += d.ref_boxes
            s.cand_boxes += d.cand_boxes
            s.matched += d.matched
            s.crossed_down += d.crossed_down
            s.crossed_up += d.crossed_up
            s.missed += d.missed
            s.extra += d.extra
        s.missed_frac = s.missed / s.ref_boxes if s.ref_boxes else 0.0
        s.extra_frac = s.extra / s.cand_boxes if s.cand_boxes else 0.0
        if self._shift:
            shift, delta = np.concatenate(self._shift), np.concatenate(self._delta)
            s.shift_px_mean, s.shift_px_max = float(shift.mean()), float(shift.max())
            s.score_delta_mean, s.score_delta_max = float(delta.mean()), float(delta.max())
            s.mean_iou = float(np.concatenate(self._iou).mean())
        ranked = sorted((d for d in self.images if d.badness > (0, 0.0, 0.0)), key=lambda d: d.badness, reverse=True)
        s.worst = ranked[: self.n_worst]
        return s
