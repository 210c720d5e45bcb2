"""Oriented-box mAP as Ultralytics' OBB validator computes it (pycocotools has no rotated IoU).

Ground truth and predictions are ``xywhr`` boxes (the ground truth's corners through their minimum-area rectangle,
Ultralytics' ``xyxyxyxy2xywhr``); their IoU is the probabilistic IoU the OBB models are trained and validated with
(:func:`unideploy.core.ops.rotated.probiou`). Matching is Ultralytics' default (``match_predictions`` without SciPy):
predictions in descending confidence each take the unclaimed ground truth of their class with the highest IoU, at
each of the ten IoU thresholds 0.50:0.05:0.95. AP is Ultralytics' ``ap_per_class``: precision envelope, 101-point
interpolation integrated with the trapezoid rule, per class with labels; mAP is the mean over those classes.

Example:
    >>> gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
    ...       "annotations": [{"image_id": 1, "category_id": 1, "poly": [0, 0, 10, 0, 10, 4, 0, 4]}]}
    >>> pred = [{"image_id": 1, "category_id": 1, "rbox": [5, 2, 10, 4, 0], "score": 0.9}]
    >>> round(obb_map(gt, pred)["mAP50-95"], 4)  # a perfect match scores 0.995 in Ultralytics' integration
    0.995
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unideploy.core.ops.rotated import corners_to_xywhr, probiou

__all__ = ["IOU_THRESHOLDS", "ap_per_class", "compute_ap", "match_predictions", "obb_map"]

#: COCO's ten IoU thresholds
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_AP_X = np.linspace(0, 1, 101)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def match_predictions(iou: np.ndarray, true_cls: np.ndarray, pred_cls: np.ndarray,
                      thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """(N_pred, T) bool: prediction ``j`` (columns of ``iou``, in descending confidence) is a true positive at
    threshold ``t``. ``iou`` is (N_gt, N_pred); only the same class matches; each ground truth is taken once.

    Example:
        >>> iou = np.array([[0.9, 0.8]])
        >>> match_predictions(iou, np.array([0]), np.array([0, 0]), np.array([0.5])).ravel().tolist()
        [True, False]
    """
    t = np.asarray(thresholds, np.float64)
    correct = np.zeros((iou.shape[1], len(t)), bool)
    if not iou.size:
        return correct
    iou = np.where(true_cls[:, None] == pred_cls[None, :], iou, 0.0)
    claimed = np.zeros((iou.shape[0], len(t)), bool)
    cols = np.arange(len(t))
    for j in np.flatnonzero((iou >= t.min()).any(0)):
        free = np.where(claimed, 0.0, iou[:, j, None])  # (N_gt, T)
        k = free.argmax(0)
        correct[j] = free[k, cols] >= t
        claimed[k, cols] |= correct[j]
    return correct


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope at 101 recall points (Ultralytics' ``compute_ap``)."""
    last = recall[-1] if len(recall) else 1.0
    mrec = np.concatenate(([0.0], recall, [last], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    return float(_trapezoid(np.interp(_AP_X, mrec, mpre), _AP_X))


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray,
                 target_cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ap, classes)``: AP (n_classes, T) of each class that has labels, at each IoU threshold."""
    order = np.argsort(-conf, kind="stable")
    tp, pred_cls = tp[order], pred_cls[order]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    ap = np.zeros((len(classes), tp.shape[1]))
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        if not sel.any():
            continue
        tpc = tp[sel].cumsum(0)
        fpc = (1 - tp[sel]).cumsum(0)
        recall = tpc / (n_labels[ci] + 1e-16)
        precision = tpc / (tpc + fpc)
        for j in range(tp.shape[1]):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j])
    return ap, classes


def obb_map(gt: dict, predictions: list[dict]) -> dict[str, Any]:
    """mAP50-95, mAP50, mAP75 and per-class AP50-95 / AP50 of oriented boxes, as Ultralytics' OBB validator.

    Args:
        gt: COCO-style ground truth whose annotations carry ``poly`` (8 numbers: the corners in pixels); crowd
            annotations are left out (Ultralytics has none).
        predictions: records with ``rbox`` ([cx, cy, w, h, radians]), ``score``, ``category_id``, ``image_id``.
    """
    names = {c["id"]: c["name"] for c in gt["categories"]}
    by_image_gt: dict[Any, list[dict]] = {}
    for a in gt.get("annotations", []):
        if not a.get("iscrowd", 0):
            by_image_gt.setdefault(a["image_id"], []).append(a)
    by_image_dt: dict[Any, list[dict]] = {}
    for p in predictions:
        by_image_dt.setdefault(p["image_id"], []).append(p)
    tps, confs, pcls, tcls = [], [], [], []
    for im in gt["images"]:
        g, d = by_image_gt.get(im["id"], []), by_image_dt.get(im["id"], [])
        gc = np.array([a["category_id"] for a in g], np.int64)
        tcls.append(gc)
        if not d:
            continue
        d = sorted(d, key=lambda r: -r["score"])
        dc = np.array([r["category_id"] for r in d], np.int64)
        if g:
            gb = corners_to_xywhr(np.array([a["poly"] for a in g], np.float32))
            db = np.array([r["rbox"] for r in d], np.float32)
            correct = match_predictions(probiou(gb, db).astype(np.float64), gc, dc)
        else:
            correct = np.zeros((len(d), len(IOU_THRESHOLDS)), bool)
        tps.append(correct)
        confs.append(np.array([r["score"] for r in d], np.float64))
        pcls.append(dc)
    target_cls = np.concatenate(tcls) if tcls else np.zeros(0, np.int64)
    per_class = {n: {"AP50-95": 0.0, "AP50": 0.0} for n in names.values()}
    if not tps or not len(target_cls):
        return {"mAP50-95": 0.0, "mAP50": 0.0, "mAP75": 0.0, "per_class": per_class}
    ap, classes = ap_per_class(np.concatenate(tps).astype(np.float64), np.concatenate(confs),
                               np.concatenate(pcls), target_cls)
    for row, c in zip(ap, classes):
        if int(c) in names:
            per_class[names[int(c)]] = {"AP50-95": float(row.mean()), "AP50": float(row[0])}
    return {"mAP50-95": float(ap.mean()), "mAP50": float(ap[:, 0].mean()), "mAP75": float(ap[:, 5].mean()),
            "per_class": per_class}
