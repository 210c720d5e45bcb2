"""Constant-velocity Kalman filters over many tracks at once (ByteTrack's and BoT-SORT's motion models).

The state is 8 numbers per track: 4 box measurements and their velocities. ByteTrack measures (cx, cy, a, h)
(centre, aspect ratio w/h, height), BoT-SORT (cx, cy, w, h). Noise scales with the box size as in the papers
(position 1/20, velocity 1/160 of the height, or of the width for x and w in the XYWH filter). Every function
works on stacks: means (T, 8), covariances (T, 8, 8), so a frame costs a few numpy calls whatever the track count.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KalmanXYAH", "KalmanXYWH"]

_POS, _VEL = 1.0 / 20, 1.0 / 160
_F = np.eye(8)
_F[np.arange(4), np.arange(4) + 4] = 1.0  # x' = x + v (dt = 1)


class KalmanXYAH:
    """Kalman filter on (cx, cy, aspect, height) boxes, ByteTrack's motion model.

    Example:
        >>> kf = KalmanXYAH()
        >>> mean, cov = kf.initiate(np.array([[50.0, 50.0, 0.5, 20.0]]))
        >>> mean, cov = kf.predict(mean, cov)
        >>> mean.shape, cov.shape
        ((1, 8), (1, 8, 8))
    """

    #: state entries (velocities) set to 0 before a lost track is predicted: the height velocity for ByteTrack
    frozen_velocity: tuple[int, ...] = (7,)

    def _scales(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-component size the noise scales with: (T, 4) for the position block (aspect gets constants)."""
        h = m[:, 3]
        return np.stack([h, h, np.zeros_like(h), h], axis=1), np.array([0.0, 0.0, 1.0, 0.0])

    def _std(self, m: np.ndarray, weight: float, aspect: float) -> np.ndarray:
        size, is_aspect = self._scales(m)
        return np.where(is_aspect > 0, aspect, weight * size)

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks from measurements (T, 4): zero velocity, covariance from the box size."""
        m = np.asarray(measurements, dtype=np.float64).reshape(-1, 4)
        mean = np.concatenate([m, np.zeros_like(m)], axis=1)
        std = np.concatenate([self._std(m, 2 * _POS, 1e-2), self._std(m, 10 * _VEL, 1e-5)], axis=1)
        cov = np.zeros((len(m), 8, 8))
        cov[:, np.arange(8), np.arange(8)] = std ** 2
        return mean, cov

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step ahead for every track."""
        std = np.concatenate([self._std(mean[:, :4], _POS, 1e-2), self._std(mean[:, :4], _VEL, 1e-5)], axis=1)
        q = np.zeros((len(mean), 8, 8))
        q[:, np.arange(8), np.arange(8)] = std ** 2
        mean = mean @ _F.T
        cov = np.dot(np.dot(_F, cov).transpose(1, 0, 2), _F.T) + q
        return mean, cov

    def update(self, mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct every track with its measurement (T, 4)."""
        r = self._std(mean[:, :4], _POS, 1e-1) ** 2
        s = cov[:, :4, :4].copy()
        s[:, np.arange(4), np.arange(4)] += r
        gain = np.linalg.solve(s, cov[:, :, :4].transpose(0, 2, 1)).transpose(0, 2, 1)  # (T, 8, 4)
        innovation = measurements - mean[:, :4]
        new_mean = mean + np.einsum("tj,tij->ti", innovation, gain)
        new_cov = cov - gain @ s @ gain.transpose(0, 2, 1)
        return new_mean, new_cov

    @staticmethod
    def to_tlwh(mean: np.ndarray) -> np.ndarray:
        """(T, 8) states -> (T, 4) boxes as left, top, width, height."""
        ret = mean[:, :4].copy()
        ret[:, 2] *= ret[:, 3]
        ret[:, :2] -= ret[:, 2:] / 2
        return ret

    @staticmethod
    def measure(tlwh: np.ndarray) -> np.ndarray:
        """(T, 4) left, top, width, height boxes -> measurements, in the boxes' dtype."""
        ret = np.array(tlwh, copy=True)
        ret[:, :2] += ret[:, 2:] / 2
        ret[:, 2] /= ret[:, 3]
        return ret


class KalmanXYWH(KalmanXYAH):
    """Kalman filter on (cx, cy, width, height) boxes, BoT-SORT's motion model."""

    frozen_velocity = (6, 7)

    def _scales(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, h = m[:, 2], m[:, 3]
        return np.stack([w, h, w, h], axis=1), np.zeros(4)

    @staticmethod
    def to_tlwh(mean: np.ndarray) -> np.ndarray:
        ret = mean[:, :4].copy()
        ret[:, :2] -= ret[:, 2:] / 2
        return ret

    @staticmethod
    def measure(tlwh: np.ndarray) -> np.ndarray:
        ret = np.array(tlwh, copy=True)
        ret[:, :2] += ret[:, 2:] / 2
        return ret
