"""Oriented boxes in numpy: corners, probabilistic IoU, rotated NMS and polygon IoU.

Boxes are ``xywhr``: centre x, centre y, width, height and the rotation in radians (Ultralytics' convention).
:func:`probiou` is the Gaussian "ProbIoU" Ultralytics' OBB models are trained and suppressed with (its
``batch_probiou``, in float32 like the reference); :func:`rotated_nms` is Ultralytics' ``TorchNMS.fast_nms`` with
that IoU (a box is dropped when any higher-scoring box overlaps it by more than the threshold, whether or not
that box was kept itself). :func:`polygon_iou` is the exact area IoU of two convex quadrilaterals, for evaluation.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["xywhr_to_corners", "corners_to_xywhr", "probiou", "rotated_nms", "polygon_iou"]


def xywhr_to_corners(xywhr: np.ndarray) -> np.ndarray:
    """(N, 5) xywhr -> (N, 4, 2) corners in Ultralytics' order (``xywhr2xyxyxyxy``: +w/2+h/2 first).

    Example:
        >>> import numpy as np
        >>> xywhr_to_corners(np.array([[10, 10, 4, 2, 0]], np.float32))[0].tolist()
        [[12.0, 11.0], [12.0, 9.0], [8.0, 9.0], [8.0, 11.0]]
    """
    x = np.asarray(xywhr, np.float32).reshape(-1, 5)
    ctr = x[:, None, :2]
    cos, sin = np.cos(x[:, 4:5]), np.sin(x[:, 4:5])
    v1 = np.concatenate([x[:, 2:3] / 2 * cos, x[:, 2:3] / 2 * sin], -1)[:, None]
    v2 = np.concatenate([-x[:, 3:4] / 2 * sin, x[:, 3:4] / 2 * cos], -1)[:, None]
    return np.concatenate([ctr + v1 + v2, ctr + v1 - v2, ctr - v1 - v2, ctr - v1 + v2], 1)


def corners_to_xywhr(corners: np.ndarray) -> np.ndarray:
    """(N, 4, 2) (or (N, 8)) polygons -> (N, 5) xywhr of their minimum-area rectangles, width the long side and
    the angle in [-pi/4, 3pi/4) (Ultralytics' ``xyxyxyxy2xywhr``)."""
    pts = np.asarray(corners, np.float32).reshape(-1, 4, 2)
    out = np.zeros((len(pts), 5), np.float32)
    for i, p in enumerate(pts):
        (cx, cy), (w, h), angle = cv2.minAreaRect(p)
        theta = angle / 180 * np.pi
        if w < h:
            w, h = h, w
            theta += np.pi / 2
        while theta >= 3 * np.pi / 4:
            theta -= np.pi
        while theta < -np.pi / 4:
            theta += np.pi
        out[i] = (cx, cy, w, h, theta)
    return out


def _cov(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a_, b_ = b[:, 2] ** 2 / np.float32(12), b[:, 3] ** 2 / np.float32(12)
    cos, sin = np.cos(b[:, 4]), np.sin(b[:, 4])
    cos2, sin2 = cos**2, sin**2
    return a_ * cos2 + b_ * sin2, a_ * sin2 + b_ * cos2, (a_ - b_) * cos * sin


def probiou(obb1: np.ndarray, obb2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Probabilistic IoU matrix (len(obb1), len(obb2)) of xywhr boxes, float32 as Ultralytics' ``batch_probiou``.

    Example:
        >>> import numpy as np
        >>> b = np.array([[10, 10, 4, 2, 0.3]], np.float32)
        >>> round(float(probiou(b, b)[0, 0]), 3)
        1.0
    """
    b1 = np.asarray(obb1, np.float32).reshape(-1, 5)
    b2 = np.asarray(obb2, np.float32).reshape(-1, 5)
    e = np.float32(eps)
    x1, y1 = b1[:, 0:1], b1[:, 1:2]
    x2, y2 = b2[None, :, 0], b2[None, :, 1]
    a1, bb1, c1 = (v[:, None] for v in _cov(b1))
    a2, bb2, c2 = (v[None, :] for v in _cov(b2))
    sa, sb, sc = a1 + a2, bb1 + bb2, c1 + c2
    den = sa * sb - sc**2
    t1 = (sa * (y1 - y2) ** 2 + sb * (x1 - x2) ** 2) / (den + e) * np.float32(0.25)
    t2 = (sc * (x2 - x1) * (y1 - y2)) / (den + e) * np.float32(0.5)
    det1 = np.clip(a1 * bb1 - c1**2, 0, None)
    det2 = np.clip(a2 * bb2 - c2**2, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        t3 = np.log(den / (4 * np.sqrt(det1 * det2) + e) + e) * np.float32(0.5)
        bd = np.clip(t1 + t2 + t3, e, np.float32(100.0))
        hd = np.sqrt(1 - np.exp(-bd) + e)
    return (1 - hd).astype(np.float32)


def rotated_nms(xywhr: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None,
                chunk: int = 2048) -> np.ndarray:
    """Indices kept by Ultralytics' fast NMS with :func:`probiou`, highest score first.

    Box ``j`` is dropped when some box with a higher score has ``probiou > iou_threshold`` with it (the upper
    triangle of the IoU matrix of the score-sorted boxes), computed in row chunks of ``chunk`` boxes.

    Example:
        >>> import numpy as np
        >>> b = np.array([[10, 10, 8, 4, 0], [10.5, 10, 8, 4, 0.1], [40, 40, 8, 4, 0]], np.float32)
        >>> rotated_nms(b, np.array([0.9, 0.8, 0.7]), 0.5).tolist()
        [0, 2]
    """
    n = len(xywhr)
    if not n:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    b = np.asarray(xywhr, np.float32)[order]
    suppressed = np.zeros(n, bool)
    thr = np.float32(iou_threshold)
    for s in range(0, n, chunk):
        iou = probiou(b[s:s + chunk], b[s:])  # rows s.., columns s..
        iou = np.triu(iou, 1)  # only a higher-scoring row suppresses a column
        suppressed[s:] |= (iou > thr).any(0)
    keep = order[~suppressed]
    return keep if max_keep is None else keep[:max_keep]


def polygon_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact IoU matrix (len(a), len(b)) of convex polygons given as (N, 4, 2) corners (OpenCV intersection)."""
    pa = np.asarray(a, np.float32).reshape(-1, 4, 2)
    pb = np.asarray(b, np.float32).reshape(-1, 4, 2)
    area_a = np.array([abs(cv2.contourArea(p)) for p in pa])
    area_b = np.array([abs(cv2.contourArea(p)) for p in pb])
    out = np.zeros((len(pa), len(pb)), np.float64)
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            inter, _ = cv2.intersectConvexConvex(p, q)
            union = area_a[i] + area_b[j] - inter
            out[i, j] = inter / union if union > 0 and inter > 0 else 0.0
    return out
