"""Boxes and masks scored as Ultralytics' ``SegmentationValidator`` scores them (``eval --metric ultralytics``).

pycocotools (the default) scores masks at the original image size. Ultralytics' ``val`` scores them in the model's
input space at the prototype resolution (a quarter of the input size), which on small inputs changes mask mAP by
points. This module reproduces that arithmetic on unideploy's predictions, so the two numbers can be compared:

* predicted masks: Ultralytics' ``process_mask`` without upsampling — the coefficients times the prototypes, ``> 0``
  (sigmoid > 0.5), cropped to the box scaled to the prototype grid (columns ``x1 <= c < x2``, rows likewise);
* ground-truth masks: ``polygons2masks_overlap`` — each polygon resampled to 1000 points
  (``resample_segments``), placed in the letterboxed input, filled with ``cv2.fillPoly`` at the input size
  (coordinates truncated to int32), resized to a quarter with ``cv2.resize``, then drawn largest first into one
  index image so that a smaller instance covers a larger one (``overlap_mask=True``, its default);
* IoU: ``box_iou`` of input-space boxes and ``mask_iou`` of the flattened masks (both ``+ 1e-7`` in the union);
* matching and AP: Ultralytics' ``match_predictions`` and ``ap_per_class``, shared with the OBB metric
  (:mod:`.obb`).

Images are resized as the validator's loader does (:func:`validator_letterbox`: the long side to the input size
with the resized size rounded up, then Ultralytics' centred letterbox; ``predict``, and so unideploy, rounds to
nearest, which moves a 160 px input by up to a pixel and 40 x 40 masks visibly). Predictions are the raw head's NMS
(:func:`unideploy.runtime.families.yolo.yolo_nms`), boxes in input pixels and not clipped, no instance dropped for
an empty mask — as the validator has them. Measured on the bundled seg demo (benchmarks/results/task_eval.json):
with ``multi_label`` this gives Ultralytics ``val``'s box mAP exactly and its mask mAP within 0.2 points.
"""

from __future__ import annotations

from typing import Any, Sequence

import math

import cv2
import numpy as np

from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.options import PostprocessOptions
from unideploy.tools.evaluate.obb import IOU_THRESHOLDS, ap_per_class, match_predictions

__all__ = ["MASK_RATIO", "UltralyticsScorer", "UltralyticsSegScorer", "box_iou", "gt_masks", "mask_iou",
           "pred_masks", "raw_segmentation", "resample_polygon", "to_input",
           "validator_letterbox"]

#: input size / mask size of Ultralytics' seg validator (its ``mask_ratio``)
MASK_RATIO = 4
_SEGMENT_POINTS = 1000  # Ultralytics' ``segment_resamples`` for segmentation labels
_EPS = 1e-7


def validator_letterbox(img: np.ndarray, imgsz: tuple[int, int],
                        pad_value: int = 114) -> tuple[np.ndarray, LetterboxInfo]:
    """A BGR image resized and padded as Ultralytics' val loader does (``load_image`` then ``LetterBox(scaleup=False)``).

    The long side goes to ``max(imgsz)`` with the other side rounded up (``math.ceil``, at most ``max(imgsz)``),
    bilinear; then, if that does not fit ``imgsz``, it is scaled down (rounded) to fit; then padded to ``imgsz``,
    centred (``round(d - 0.1)`` before, ``round(d + 0.1)`` after).

    Example:
        >>> im, info = validator_letterbox(np.zeros((272, 636, 3), np.uint8), (160, 160))
        >>> im.shape, info.new_unpad, info.pad
        ((160, 160, 3), (160, 69), (0, 45))
    """
    h0, w0 = img.shape[:2]
    hh, ww = imgsz
    m = max(imgsz)
    r = m / max(h0, w0)
    im = img
    if r != 1:
        im = cv2.resize(img, (min(math.ceil(w0 * r), m), min(math.ceil(h0 * r), m)), interpolation=cv2.INTER_LINEAR)
    h1, w1 = im.shape[:2]
    r2 = min(hh / h1, ww / w1, 1.0)
    w2, h2 = max(round(w1 * r2), 1), max(round(h1 * r2), 1)
    if (w2, h2) != (w1, h1):
        im = cv2.resize(im, (w2, h2), interpolation=cv2.INTER_LINEAR)
    dw, dh = (ww - w2) / 2, (hh - h2) / 2
    top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return im, LetterboxInfo((h0, w0), (w2, h2), (left, top), (w2 / w0, h2 / h0))


def resample_polygon(poly: np.ndarray, n: int = _SEGMENT_POINTS) -> np.ndarray:
    """(n, 2) float32: a closed polygon with points inserted evenly along its edges, keeping its vertices
    (Ultralytics' ``resample_segments``; a polygon of exactly ``n`` points is returned as it is)."""
    s = np.asarray(poly, np.float64).reshape(-1, 2)
    if len(s) == n:
        return s.astype(np.float32)
    s = np.concatenate([s, s[:1]], 0)
    xp = np.arange(len(s))
    x = np.linspace(0, len(s) - 1, n - len(s) if len(s) < n else n)
    if len(s) < n:
        x = np.insert(x, np.searchsorted(x, xp), xp)
    return np.stack([np.interp(x, xp, s[:, 0]), np.interp(x, xp, s[:, 1])], 1).astype(np.float32)


def gt_masks(polygons: Sequence[np.ndarray], input_hw: tuple[int, int],
             ratio: int = MASK_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth masks as Ultralytics' seg validator has them: ``(masks, order)``.

    Args:
        polygons: each instance's (K, 2) polygon in input (letterboxed) pixels.
        input_hw: the model input (height, width).
        ratio: input size / mask size.

    Returns:
        ``masks`` (N, H // ratio, W // ratio) bool, largest area first, and ``order``: ``masks[i]`` is the mask of
        ``polygons[order[i]]``. A polygon fully covered by smaller ones has an empty mask, as in Ultralytics.
    """
    h, w = input_hw
    mh, mw = h // ratio, w // ratio
    singles = []
    for p in polygons:
        full = np.zeros((h, w), np.uint8)
        cv2.fillPoly(full, [np.asarray(p, np.float32).astype(np.int32).reshape(-1, 2)], 1)
        singles.append(cv2.resize(full, (mw, mh)))
    if not singles:
        return np.zeros((0, mh, mw), bool), np.zeros(0, np.int64)
    order = np.argsort(-np.array([m.sum() for m in singles]), kind="stable")
    index = np.zeros((mh, mw), np.int32)
    for k, i in enumerate(order):
        np.maximum(index, singles[i].astype(np.int32) * (k + 1), out=index)
    return index[None] == np.arange(1, len(order) + 1)[:, None, None], order.astype(np.int64)


def pred_masks(protos: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """(N, mh, mw) bool masks at the prototype resolution (Ultralytics' ``process_mask``, ``upsample=False``).

    Args:
        protos: (nm, mh, mw) prototypes of one image. coeffs: (N, nm) mask coefficients.
        boxes: (N, 4) xyxy in input pixels. input_hw: the model input (height, width).
    """
    nm, mh, mw = protos.shape
    if not len(coeffs):
        return np.zeros((0, mh, mw), bool)
    logits = (np.asarray(coeffs, np.float32) @ protos.reshape(nm, -1).astype(np.float32)).reshape(-1, mh, mw)
    b = np.asarray(boxes, np.float32) * np.array([mw / input_hw[1], mh / input_hw[0]] * 2, np.float32)
    cols = np.arange(mw, dtype=np.float32)[None, None, :]
    rows = np.arange(mh, dtype=np.float32)[None, :, None]
    inside = ((cols >= b[:, 0, None, None]) & (cols < b[:, 2, None, None])
              & (rows >= b[:, 1, None, None]) & (rows < b[:, 3, None, None]))
    return (logits > 0) & inside


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes (Ultralytics' ``box_iou``)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None] - inter + _EPS)


def mask_iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(len(gt), len(pred)) IoU of flattened binary masks (Ultralytics' ``mask_iou``)."""
    g = gt.reshape(len(gt), -1).astype(np.float32)
    p = pred.reshape(len(pred), -1).astype(np.float32)
    inter = np.clip(g @ p.T, 0, None)
    return inter / (g.sum(1)[:, None] + p.sum(1)[None] - inter + _EPS)


def to_input(xy: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Image pixels -> letterboxed input pixels (x * gain + pad, per axis)."""
    out = np.asarray(xy, np.float64).reshape(-1, 2) * np.array(info.gain, np.float64) + np.array(info.pad, np.float64)
    return out.reshape(np.shape(xy))


class UltralyticsScorer:
    """Per-image true-positive tables of boxes and of the task's own instances (masks, keypoints), then Ultralytics'
    ``ap_per_class`` over all images: ``result()`` -> {"box": metrics, key: metrics}."""

    def __init__(self, names: dict[int, str], key: str, what: str) -> None:
        self.names, self.key, self.what = dict(names), key, what
        self._tp: dict[str, list[np.ndarray]] = {"box": [], key: []}
        self._conf: list[np.ndarray] = []
        self._pcls: list[np.ndarray] = []
        self._tcls: list[np.ndarray] = []

    def add(self, gt_cls: np.ndarray, gt_boxes: np.ndarray, boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray,
            task_iou: Any) -> None:
        """One image: ground-truth classes and input-space boxes, the NMS output (score order), and a callable
        giving the (N_gt, N_pred) IoU of the task's instances (called only when both sides are non-empty)."""
        gc, pc = np.asarray(gt_cls, np.int64), np.asarray(cls, np.int64)
        self._tcls.append(gc)
        if not len(pc):
            return
        if len(gc):
            tp_b = match_predictions(box_iou(gt_boxes, boxes).astype(np.float64), gc, pc)
            tp_t = match_predictions(np.asarray(task_iou(), np.float64), gc, pc)
        else:
            tp_b = tp_t = np.zeros((len(pc), len(IOU_THRESHOLDS)), bool)
        self._tp["box"].append(tp_b)
        self._tp[self.key].append(tp_t)
        self._conf.append(np.asarray(scores, np.float64))
        self._pcls.append(pc)

    def result(self) -> dict[str, dict[str, Any]]:
        """{"box": metrics, key: metrics}, each {"mAP50-95", "mAP50", "mAP75", "per_class", "metric"}."""
        target = np.concatenate(self._tcls) if self._tcls else np.zeros(0, np.int64)
        out = {}
        for key, tps in self._tp.items():
            per_class = {n: {"AP50-95": 0.0, "AP50": 0.0} for n in self.names.values()}
            m = {"mAP50-95": 0.0, "mAP50": 0.0, "mAP75": 0.0}
            if tps and len(target):
                ap, classes = ap_per_class(np.concatenate(tps).astype(np.float64), np.concatenate(self._conf),
                                           np.concatenate(self._pcls), target)
                for row, c in zip(ap, classes):
                    if int(c) in self.names:
                        per_class[self.names[int(c)]] = {"AP50-95": float(row.mean()), "AP50": float(row[0])}
                m = {"mAP50-95": float(ap.mean()), "mAP50": float(ap[:, 0].mean()), "mAP75": float(ap[:, 5].mean())}
            out[key] = {**m, "per_class": per_class, "metric": f"Ultralytics {self.what} ({key})"}
        return out


class UltralyticsSegScorer(UltralyticsScorer):
    """Boxes and masks of a segmentation model, as Ultralytics' SegmentationValidator (see the module docstring).

    Example:
        >>> s = UltralyticsSegScorer({0: "a"})
        >>> s.add_image(np.array([0]), np.array([[0, 0, 40, 40.]]), [np.array([[0, 0], [40, 0], [40, 40], [0, 40.]])],
        ...             LetterboxInfo((40, 40), (40, 40), (0, 0), (1.0, 1.0)), (40, 40), np.array([[0, 0, 40, 40.]]),
        ...             np.array([0.9]), np.array([0]), np.full((1, 10, 10), 1.0), np.ones((1, 1)))
        >>> round(s.result()["mask"]["mAP50"], 3)
        0.995
    """

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__(names, "mask", "SegmentationValidator")

    def add_image(self, gt_cls: np.ndarray, gt_xyxy: np.ndarray, gt_polygons: Sequence[np.ndarray],
                  info: LetterboxInfo, input_hw: tuple[int, int], boxes: np.ndarray, scores: np.ndarray,
                  cls: np.ndarray, protos: np.ndarray, coeffs: np.ndarray) -> None:
        """One image: its ground truth in image pixels, its NMS output in input pixels (score order) and prototypes."""
        polys = [to_input(p, info) for p in gt_polygons]
        masks_gt, order = gt_masks([resample_polygon(p) for p in polys], input_hw)
        gb = to_input(np.asarray(gt_xyxy, np.float64).reshape(-1, 4), info).reshape(-1, 4)[order]
        self.add(np.asarray(gt_cls, np.int64)[order], gb, boxes, scores, cls,
                 lambda: mask_iou(masks_gt, pred_masks(protos, coeffs, boxes, input_hw)))


def raw_segmentation(adapter: Any, outputs: list[np.ndarray],
                     options: PostprocessOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NMS of one image's raw ``-seg`` outputs as the validator has it: (boxes in input pixels, scores, classes,
    prototypes (nm, mh, mw), coefficients (N, nm)). ``adapter`` is the model's YOLO seg adapter."""
    from unideploy.runtime.families.yolo import yolo_nms

    o = adapter.resolve_options(options)
    pred = np.asarray(next(x for x in outputs if x.ndim == 3)[0], np.float32)
    protos = np.asarray(next(x for x in outputs if x.ndim == 4)[0], np.float32)
    nm = protos.shape[0]
    nc = adapter.spec.num_classes or pred.shape[0] - 4 - nm
    boxes, scores, cls, idx = yolo_nms(pred, nc, o.conf, o.iou, o.max_det, o.agnostic, o.classes, o.multi_label)
    return boxes, scores, cls, protos, pred[4 + nc:4 + nc + nm, idx].T
