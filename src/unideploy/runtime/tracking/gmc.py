"""Global motion compensation by sparse optical flow (BoT-SORT's camera-motion model).

Corners of the previous frame (``cv2.goodFeaturesToTrack`` on the half-size grey image) are followed into the
current frame with pyramidal Lucas-Kanade flow, and a similarity transform (rotation, uniform scale, translation) is
fitted to the pairs with RANSAC. The 2x3 matrix maps previous-frame coordinates to current-frame ones; the
tracker moves its Kalman states with it before matching.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["SparseFlowGMC", "warp_states"]


class SparseFlowGMC:
    """Camera motion between consecutive frames.

    Args:
        downscale: frames are shrunk by this factor before corner detection and flow.

    Example:
        >>> gmc = SparseFlowGMC()
        >>> frame = np.zeros((64, 64, 3), np.uint8)
        >>> gmc.apply(frame).tolist()  # the first frame: no motion yet
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """

    def __init__(self, downscale: int = 2) -> None:
        self.downscale = max(1, int(downscale))
        self._prev: np.ndarray | None = None
        self._prev_points: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the previous frame (a new video)."""
        self._prev = self._prev_points = None

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """The 2x3 affine transform from the previous frame to ``frame`` (identity on the first frame)."""
        h, w = frame.shape[:2]
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 and frame.shape[2] == 3 else frame
        if self.downscale > 1:
            grey = cv2.resize(grey, (w // self.downscale, h // self.downscale))
        points = cv2.goodFeaturesToTrack(grey, maxCorners=400, qualityLevel=0.01, minDistance=0, blockSize=3,
                                         useHarrisDetector=False, k=0.04)
        warp = np.eye(2, 3)
        if self._prev is not None and self._prev_points is not None:
            moved, status, _ = cv2.calcOpticalFlowPyrLK(self._prev, grey, self._prev_points, None)
            ok = status.ravel().astype(bool)
            if ok.sum() > 4:
                est = cv2.estimateAffinePartial2D(self._prev_points[ok], moved[ok], method=cv2.RANSAC)[0]
                if est is not None:
                    warp = est
                    warp[:, 2] *= self.downscale
        self._prev, self._prev_points = grey, points
        return warp


def warp_states(mean: np.ndarray, cov: np.ndarray, warp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move Kalman states (T, 8) / (T, 8, 8) of (cx, cy, w, h)-like boxes by a 2x3 camera transform.

    Positions and their velocities are rotated and scaled by the linear part, sizes and their velocities by its
    absolute value; the translation is added to the position.
    """
    r = warp[:2, :2]
    big = np.kron(np.eye(4, dtype=np.float32), r)
    big[2:4, 2:4] = big[6:8, 6:8] = np.abs(r)
    mean = (big @ mean[..., None])[..., 0]
    mean[:, :2] += warp[:2, 2]
    cov = big @ cov @ np.ascontiguousarray(big.T)
    return mean, cov
