"""Greedy non-maximum suppression in numpy, matching ``torchvision.ops.nms`` semantics; the one NMS of the package.

:func:`nms` is the greedy pass; :func:`batched_nms` is class-aware NMS as ``torchvision.ops.batched_nms`` (and
mmdet's) computes it. Ultralytics-style families offset boxes per class by a fixed 7680 px themselves and call
:func:`nms`.

The greedy pass runs in chunks of the highest-scoring boxes still alive: inside a chunk the kept set is the
fixed point of "kept iff no kept, higher-scoring box of the chunk overlaps it by more than the threshold"
(a triangular recurrence, so the iteration reaches exactly the greedy result), then every later box is tested
against the chunk's kept boxes in one vectorised step. Same float32 IoU expression as the one-box-at-a-time
loop and torchvision, so the same boxes are kept; ~3.5x faster than that loop on random-weight YOLOv8n-640
outputs (thousands of candidates), where NMS dominated the postprocessing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nms", "batched_nms"]

_CHUNK = 128  # boxes resolved per vectorised step (32-256 were within 10% of each other)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first.

    A box is suppressed when its IoU with an already kept, higher-scoring box is strictly greater than
    ``iou_threshold`` (the torchvision rule). Class-aware NMS is done by the caller by offsetting boxes
    per class, as Ultralytics does.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,).
        iou_threshold: suppression threshold.
        max_keep: stop after this many kept boxes (the result equals the first ``max_keep`` of a full run).

    Example:
        >>> import numpy as np
        >>> b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
        >>> nms(b, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist()
        [0, 2]
    """
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    b = np.asarray(boxes, dtype=np.float32)[order]
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    thr = np.float32(iou_threshold)
    limit = n if max_keep is None else int(max_keep)
    alive = np.ones(n, dtype=bool)
    keep: list[np.ndarray] = []
    kept = 0
    start = 0
    while kept < limit and start < n:
        idx = np.flatnonzero(alive[start:start + 4 * _CHUNK])[:_CHUNK] + start
        if not idx.size:
            if not alive[start:].any():
                break
            start += 4 * _CHUNK
            continue
        sup = _iou(x1, y1, x2, y2, areas, idx, idx) > thr
        sup = np.triu(sup, 1)  # (j, i): j before i suppresses i
        ck = np.ones(idx.size, dtype=bool)
        while True:  # greedy inside the chunk: the fixed point of "kept iff no kept earlier box suppresses it"
            nxt = ~(sup & ck[:, None]).any(0)
            if np.array_equal(nxt, ck):
                break
            ck = nxt
        kidx = idx[ck][: limit - kept]
        keep.append(kidx)
        kept += kidx.size
        alive[idx] = False
        last = int(idx[-1]) + 1
        if kept >= limit or last >= n:
            break
        rest = np.flatnonzero(alive[last:]) + last
        if rest.size and kidx.size:
            hit = (_iou(x1, y1, x2, y2, areas, kidx, rest) > thr).any(0)
            alive[rest[hit]] = False
        start = last
    out = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return order[out].astype(np.int64)


def _iou(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, areas: np.ndarray,
         a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (rows) with boxes ``b`` (columns), float32, NaN for two empty boxes."""
    w = np.maximum(0.0, np.minimum(x2[a][:, None], x2[b][None]) - np.maximum(x1[a][:, None], x1[b][None]))
    h = np.maximum(0.0, np.minimum(y2[a][:, None], y2[b][None]) - np.maximum(y1[a][:, None], y1[b][None]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (areas[a][:, None] + areas[b][None] - inter)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                agnostic: bool = False, max_keep: int | None = None, split: int = 1000) -> np.ndarray:
    """Class-aware NMS as ``torchvision.ops.batched_nms`` computes it on CPU, down to float32 rounding.

    Up to ``split`` boxes, torchvision offsets each class by (largest coordinate + 1) in float32 and runs one NMS;
    above, it runs NMS class by class (``_batched_nms_vanilla``) and sorts the kept boxes by score. mmdet-style
    ``batched_nms`` (NanoDet) does the same with a ``split_thr`` of 10000.

    Args:
        boxes: (N, 4) xyxy (computed in float32).
        scores: (N,).
        classes: (N,) integer class of each box.
        iou_threshold: suppression threshold (strictly greater IoU suppresses).
        agnostic: ignore the classes (one plain :func:`nms`).
        max_keep: keep at most this many boxes, highest score first.
        split: box count above which NMS runs class by class.

    Example:
        >>> b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10]], np.float32)
        >>> batched_nms(b, np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 0, 1]), 0.5).tolist()
        [0, 2]
    """
    boxes = np.asarray(boxes, np.float32)
    if agnostic or not len(boxes):
        return nms(boxes, scores, iou_threshold, max_keep=max_keep)
    if len(boxes) <= split:
        offset = classes.astype(np.float32)[:, None] * (boxes.max() + np.float32(1))
        return nms(boxes + offset, scores, iou_threshold, max_keep=max_keep)
    keep = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        keep.append(idx[nms(boxes[idx], scores[idx], iou_threshold, max_keep=max_keep)])
    k = np.concatenate(keep)
    k = k[np.argsort(-np.asarray(scores)[k], kind="stable")]
    return k[:max_keep] if max_keep is not None else k
