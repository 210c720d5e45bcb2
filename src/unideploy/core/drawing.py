"""Drawing results on images: boxes with class names and scores, masks, keypoints, rotated boxes, top classes.

Example:
    >>> import numpy as np
    >>> from unideploy.core.results import Detections
    >>> det = Detections(np.array([[2, 2, 20, 20]], np.float32), np.array([0.9], np.float32), np.array([0]))
    >>> draw_detections(np.zeros((32, 32, 3), np.uint8), det).any()
    np.True_
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from unideploy.core.atomic import atomic_write_bytes
from unideploy.core.results import Classifications, Detections, OrientedDetections
from unideploy.core.task_io import draw_task

__all__ = ["draw_classification", "draw_detections", "draw_result", "write_image"]


def draw_classification(img: np.ndarray, res: Classifications, k: int = 3) -> np.ndarray:
    """A copy of ``img`` with the top-``k`` classes written in the top-left corner."""
    out = img.copy()
    fs = max(0.4, min(out.shape[:2]) / 600)
    for i, (p, n) in enumerate(zip(res.confidence[:k], res.class_names[:k])):
        y = int((i + 1) * 28 * fs) + 4
        cv2.putText(out, f"{n} {p:.2f}", (6, y), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, f"{n} {p:.2f}", (6, y), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _colour(k: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(k * 7919 + 17)
    return tuple(int(v) for v in rng.integers(60, 255, 3))  # type: ignore[return-value]


def draw_detections(img: np.ndarray, det: Detections) -> np.ndarray:
    """A copy of ``img`` (BGR) with boxes, class names and scores drawn."""
    out = draw_task(img.copy(), det, _colour)  # masks, keypoints, rotated boxes
    lw = max(1, round(sum(out.shape[:2]) / 2 * 0.003))
    for (x1, y1, x2, y2), s, c, name in zip(det.xyxy, det.confidence, det.class_id, det.class_names):
        col = _colour(int(c))
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        if not isinstance(det, OrientedDetections):
            cv2.rectangle(out, p1, p2, col, lw, cv2.LINE_AA)
        label = f"{name} {s:.2f}"
        fs = max(lw / 3, 0.4)
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, fs, max(lw - 1, 1))
        y = p1[1] - th - 3 if p1[1] - th - 3 >= 0 else p1[1] + th + 3
        cv2.rectangle(out, (p1[0], y), (p1[0] + tw, y + th + 3) if y > p1[1] else (p1[0] + tw, p1[1]), col, -1)
        cv2.putText(out, label, (p1[0], (y + th + 1) if y > p1[1] else p1[1] - 2), cv2.FONT_HERSHEY_SIMPLEX, fs,
                    (255, 255, 255), max(lw - 1, 1), cv2.LINE_AA)
    return out


def draw_result(img: np.ndarray, result: Detections | Classifications) -> np.ndarray:
    """A copy of ``img`` with ``result`` drawn: boxes for detections, the top classes for a classification."""
    return draw_classification(img, result) if isinstance(result, Classifications) else draw_detections(img, result)


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Encode ``img`` by the path's suffix and write it atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".jpg", img)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {path.suffix}")
    atomic_write_bytes(path, buf.tobytes())
