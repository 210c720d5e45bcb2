"""Keypoints and rotated boxes through the letterbox, and keypoint similarity (OKS).

:func:`unletterbox_points` is Ultralytics' ``scale_coords`` (undo padding and gain, clip to the image);
:func:`unletterbox_xywhr` is its ``scale_boxes(..., xywh=True)`` for rotated boxes (not clipped).
"""

from __future__ import annotations

import numpy as np

from unideploy.core.ops.letterbox import LetterboxInfo

__all__ = ["COCO_KPT_SIGMAS", "keypoint_sigmas", "oks", "unletterbox_points", "unletterbox_xywhr"]

#: COCO's per-keypoint sigmas for the 17 person keypoints
COCO_KPT_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


def unletterbox_points(pts: np.ndarray, info: LetterboxInfo, clip: bool = True) -> np.ndarray:
    """Map (..., >=2) points (x, y first) from model-input pixels back to the original image (in place).

    Example:
        >>> import numpy as np
        >>> info = LetterboxInfo((100, 200), (64, 32), (0, 16), (0.32, 0.32))
        >>> unletterbox_points(np.array([[32.0, 32.0, 0.9]]), info).tolist()
        [[100.0, 50.0, 0.9]]
    """
    pts[..., 0] -= info.pad[0]
    pts[..., 1] -= info.pad[1]
    pts[..., 0] /= info.gain[0]
    pts[..., 1] /= info.gain[1]
    if clip:
        h, w = info.orig_shape
        np.clip(pts[..., 0], 0, w, out=pts[..., 0])
        np.clip(pts[..., 1], 0, h, out=pts[..., 1])
    return pts


def unletterbox_xywhr(b: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map (N, 5) xywhr boxes from model-input pixels back to the original image (in place, not clipped)."""
    b[:, 0] -= info.pad[0]
    b[:, 1] -= info.pad[1]
    b[:, 0] /= info.gain[0]
    b[:, 1] /= info.gain[1]
    b[:, 2] /= info.gain[0]
    b[:, 3] /= info.gain[1]
    return b


def keypoint_sigmas(k: int) -> np.ndarray:
    """Per-keypoint OKS sigmas: COCO's for 17 keypoints, else Ultralytics' uniform ``1 / k``."""
    return COCO_KPT_SIGMAS.copy() if k == 17 else np.full(k, 1.0 / k)


def oks(a: np.ndarray, b: np.ndarray, area: np.ndarray, sigmas: np.ndarray | None = None) -> np.ndarray:
    """Object keypoint similarity matrix (len(a), len(b)) of (N, K, 3) keypoint sets, over ``b``'s visible points
    (conf > 0) with object ``area`` per ``b`` entry (COCO's formula)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    k = a.shape[1] if a.ndim == 3 else b.shape[1]
    s = keypoint_sigmas(k) if sigmas is None else np.asarray(sigmas, np.float64)
    d2 = ((a[:, None, :, :2] - b[None, :, :, :2]) ** 2).sum(-1)  # (Na, Nb, K)
    e = d2 / ((2 * s) ** 2 * 2 * (np.asarray(area, np.float64)[None, :, None] + np.spacing(1)))
    vis = (b[None, :, :, 2] > 0)
    num = (np.exp(-e) * vis).sum(-1)
    cnt = vis.sum(-1)
    return np.where(cnt > 0, num / np.maximum(cnt, 1), 0.0)
