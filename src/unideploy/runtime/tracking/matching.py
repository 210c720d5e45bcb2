"""Association costs and the assignment solver used by the trackers.

Costs are ``1 - IoU`` (optionally fused with the detection score: ``1 - IoU * score``); the assignment is the
Jonker-Volgenant solver of the ``lap`` package on the matrix extended with "leave unmatched" entries at half the
threshold, so a pair costing more than the threshold is never matched (the formulation of ByteTrack).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fuse_score", "iou_cost", "linear_assignment"]


def iou_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - IoU`` between float32 xyxy boxes a (N, 4) and b (M, 4) -> (N, M) float32."""
    if not len(a) or not len(b):
        return np.ones((len(a), len(b)), np.float32)
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    ax1, ay1, ax2, ay2 = a.T
    bx1, by1, bx2, by2 = b.T
    inter = ((np.minimum(ax2[:, None], bx2) - np.maximum(ax1[:, None], bx1)).clip(0)
             * (np.minimum(ay2[:, None], by2) - np.maximum(ay1[:, None], by1)).clip(0))
    union = (bx2 - bx1) * (by2 - by1) + ((ax2 - ax1) * (ay2 - ay1))[:, None] - inter
    return 1 - inter / (union + np.float32(1e-7))


def fuse_score(cost: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Fold detection scores (M,) into an IoU cost (N, M): ``1 - (1 - cost) * score``."""
    if cost.size == 0:
        return cost
    return 1 - (1 - cost) * np.asarray(scores, dtype=cost.dtype)[None, :]


def linear_assignment(cost: np.ndarray, thresh: float) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Minimum-cost matching with pairs costing more than ``thresh`` left unmatched.

    Returns:
        (matches as (row, col) pairs in row order, unmatched rows, unmatched columns), index arrays ascending.

    Example:
        >>> m, ua, ub = linear_assignment(np.array([[0.1, 0.9], [0.95, 0.99]]), 0.8)
        >>> m, ua.tolist(), ub.tolist()
        ([(0, 0)], [1], [1])
    """
    n, m = cost.shape
    if cost.size == 0:
        return [], np.arange(n), np.arange(m)
    import lap

    _, x, y = lap.lapjv(cost, extend_cost=True, cost_limit=thresh)
    matches = [(i, int(j)) for i, j in enumerate(x) if j >= 0]
    return matches, np.flatnonzero(x < 0), np.flatnonzero(y < 0)
