"""Greedy non-maximum suppression in numpy, matching ``torchvision.ops.nms`` semantics."""

from __future__ import annotations

import numpy as np


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
    boxes = np.asarray(boxes, dtype=np.float32)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    keep: list[int] = []
    limit = n if max_keep is None else max_keep
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        if not rest.size:
            break
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]  # NaN (two zero-area boxes) is not > thr: kept, as torchvision
    return np.asarray(keep, dtype=np.int64)
