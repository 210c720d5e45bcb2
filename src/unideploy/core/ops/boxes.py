"""Box format conversions and IoU (numpy)."""

from __future__ import annotations

import numpy as np


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    """Centre x, centre y, width, height -> x1, y1, x2, y2 (any leading shape)."""
    out = np.empty_like(b)
    half_w, half_h = b[..., 2] / 2, b[..., 3] / 2
    out[..., 0] = b[..., 0] - half_w
    out[..., 1] = b[..., 1] - half_h
    out[..., 2] = b[..., 0] + half_w
    out[..., 3] = b[..., 1] + half_h
    return out


def xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 -> x1, y1, width, height (COCO bbox)."""
    out = b.copy()
    out[..., 2:] = b[..., 2:] - b[..., :2]
    return out


def clip_boxes(b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Clip xyxy boxes in place to an image of shape (height, width); returns them."""
    h, w = shape[:2]
    np.clip(b[..., 0::2], 0, w, out=b[..., 0::2])
    np.clip(b[..., 1::2], 0, h, out=b[..., 1::2])
    return b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of two sets of xyxy boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
