"""Task-level comparison beyond boxes: masks, keypoints and rotated boxes of matched instances.

The detection level (:mod:`.detections`) pairs each reference instance with a candidate one (same class, box IoU);
for each such pair this module measures what the task adds:

* segmentation: the IoU of the two masks (at the image size, as both sides give them);
* pose: the largest keypoint displacement in pixels over the keypoints the reference is confident about
  (confidence >= ``kpt_conf``), and the object keypoint similarity (COCO's OKS with the reference's box area x 0.53
  and the keypoint sigmas of :func:`unideploy.core.ops.keypoints.keypoint_sigmas`);
* oriented boxes: the exact IoU of the two rotated rectangles and the angle difference (modulo pi, the symmetry of
  a rectangle), the angle only for boxes whose sides differ by at least ``min_aspect`` (a square has no angle).

Example:
    >>> import numpy as np
    >>> from unideploy.core.results import Masks, Segmentations
    >>> m = np.zeros((1, 8, 8), bool); m[0, 2:6, 2:6] = True
    >>> r = Segmentations(np.array([[2, 2, 6, 6]]), np.array([0.9]), np.array([0]), masks=Masks(m))
    >>> acc = TaskAccumulator()
    >>> acc.update(r, r, np.array([[0, 0]]))
    >>> acc.result().mask_iou_mean
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from unideploy.core.ops.keypoints import keypoint_sigmas
from unideploy.core.ops.rotated import polygon_iou
from unideploy.core.results import Detections, OrientedDetections, Poses, Segmentations

__all__ = ["TaskAccumulator", "TaskStats"]


def _finite(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


@dataclass
class TaskStats:
    """What the task adds to the matched pairs, over all images (None where the task does not apply).

    Attributes:
        kind: "segment", "pose" or "obb" (None: plain detections). pairs: matched pairs measured.
        mask_iou_mean / mask_iou_p5 / mask_iou_min: mask IoU of the pairs (mean, 5th percentile, lowest).
        kpt_px_max / kpt_px_mean: keypoint displacement (largest per pair: its max and its mean), in pixels.
        oks_mean / oks_min: object keypoint similarity of the pairs.
        rotated_iou_mean / rotated_iou_min: exact IoU of the rotated boxes of the pairs.
        angle_deg_max / angle_deg_mean: rotation difference of the pairs with a defined angle, in degrees.
    """

    kind: str | None = None
    pairs: int = 0
    mask_iou_mean: float | None = None
    mask_iou_p5: float | None = None
    mask_iou_min: float | None = None
    kpt_px_max: float | None = None
    kpt_px_mean: float | None = None
    oks_mean: float | None = None
    oks_min: float | None = None
    rotated_iou_mean: float | None = None
    rotated_iou_min: float | None = None
    angle_deg_max: float | None = None
    angle_deg_mean: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _kind(r: Detections) -> str | None:
    if isinstance(r, Segmentations):
        return "segment"
    if isinstance(r, Poses):
        return "pose"
    if isinstance(r, OrientedDetections):
        return "obb"
    return None


def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in radians modulo pi (a rectangle turned by pi is the same rectangle), in [0, pi/2].

    Example:
        >>> round(float(angle_error(np.array([0.1]), np.array([np.pi + 0.05]))[0]), 3)
        0.05
    """
    d = np.mod(np.asarray(a, np.float64) - np.asarray(b, np.float64), np.pi)
    return np.minimum(d, np.pi - d)


class TaskAccumulator:
    """Accumulates mask / keypoint / rotated-box agreement of matched pairs, image by image.

    Args:
        kpt_conf: keypoints the reference gives at least this confidence are compared.
        min_aspect: the angle is compared only for boxes whose long side is at least this times the short one.
    """

    def __init__(self, kpt_conf: float = 0.5, min_aspect: float = 1.2) -> None:
        self.kpt_conf, self.min_aspect = float(kpt_conf), float(min_aspect)
        self.kind: str | None = None
        self._v: dict[str, list[np.ndarray]] = {k: [] for k in ("mask", "kpt", "oks", "riou", "angle")}
        self.pairs = 0

    def update(self, ref: Detections, cand: Detections, pairs: np.ndarray) -> None:
        """Measure the ``pairs`` ((K, 2) reference index, candidate index) of one image."""
        kind = _kind(ref)
        if kind is None or kind != _kind(cand):
            return
        self.kind = kind
        if not len(pairs):
            return
        i, j = pairs[:, 0], pairs[:, 1]
        self.pairs += len(pairs)
        if kind == "segment":
            a, b = ref.masks.data[i], cand.masks.data[j]  # type: ignore[attr-defined]
            if a.shape[1:] == b.shape[1:]:
                fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
                inter = (fa & fb).sum(1).astype(np.float64)
                union = (fa | fb).sum(1).astype(np.float64)
                self._v["mask"].append(np.where(union > 0, inter / np.maximum(union, 1), 1.0))
        elif kind == "pose":
            ka, kb = ref.keypoints.data[i], cand.keypoints.data[j]  # type: ignore[attr-defined]
            dist = np.linalg.norm(ka[..., :2] - kb[..., :2], axis=-1)  # (K pairs, keypoints)
            seen = ka[..., 2] >= self.kpt_conf
            self._v["kpt"].append(np.where(seen, dist, 0.0).max(1))
            box = ref.xyxy[i]
            area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) * 0.53
            s = keypoint_sigmas(ka.shape[1])
            e = dist**2 / ((2 * s) ** 2 * 2 * (area[:, None] + np.spacing(1)))
            n = seen.sum(1)
            self._v["oks"].append(np.where(n > 0, (np.exp(-e) * seen).sum(1) / np.maximum(n, 1), 1.0))
        else:
            ra, rb = ref.obb, cand.obb  # type: ignore[attr-defined]
            ca, cb = ra.corners[i], rb.corners[j]
            self._v["riou"].append(np.array([polygon_iou(p[None], q[None])[0, 0] for p, q in zip(ca, cb)]))
            wa, ha = ra.xywhr[i, 2], ra.xywhr[i, 3]
            defined = np.maximum(wa, ha) >= self.min_aspect * np.maximum(np.minimum(wa, ha), 1e-9)
            ang = angle_error(ra.xywhr[i, 4], rb.xywhr[j, 4])
            # a box whose width and height swap between the sides has turned by pi/2 in xywhr terms
            swapped = (wa - ha) * (rb.xywhr[j, 2] - rb.xywhr[j, 3]) < 0
            ang = np.where(swapped, angle_error(ra.xywhr[i, 4], rb.xywhr[j, 4] + np.pi / 2), ang)
            self._v["angle"].append(np.degrees(ang[defined]))

    def result(self) -> TaskStats:
        """The statistics so far."""
        s = TaskStats(kind=self.kind, pairs=self.pairs)
        v = {k: np.concatenate(x) if x else np.zeros(0) for k, x in self._v.items()}
        if len(v["mask"]):
            s.mask_iou_mean, s.mask_iou_min = _finite(v["mask"].mean()), _finite(v["mask"].min())
            s.mask_iou_p5 = _finite(np.percentile(v["mask"], 5))
        if len(v["kpt"]):
            s.kpt_px_max, s.kpt_px_mean = _finite(v["kpt"].max()), _finite(v["kpt"].mean())
            s.oks_mean, s.oks_min = _finite(v["oks"].mean()), _finite(v["oks"].min())
        if len(v["riou"]):
            s.rotated_iou_mean, s.rotated_iou_min = _finite(v["riou"].mean()), _finite(v["riou"].min())
        if len(v["angle"]):
            s.angle_deg_max, s.angle_deg_mean = _finite(v["angle"].max()), _finite(v["angle"].mean())
        return s
