"""Sinks for tracked frames: MOTChallenge text and annotated video with identities and trails.

JSON lines need no sink of their own: :class:`~unideploy.core.sinks.JsonLinesSink` writes each detection's
``tracker_id`` (it is part of :meth:`Detections.to_dicts`).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unideploy.core.results import Detections
from unideploy.core.sinks import BaseSink, VideoSink, atomic_write_text

__all__ = ["MotSink", "TrackVideoSink", "draw_tracks", "mot_lines"]


def mot_lines(frame: int, det: Detections) -> list[str]:
    """MOTChallenge lines of one frame: ``frame,id,x,y,w,h,score,class+1,-1`` (``frame`` 1-based).

    Example:
        >>> d = Detections(np.array([[10, 20, 40, 60]]), np.array([0.9]), np.array([0]), tracker_id=np.array([3]))
        >>> mot_lines(1, d)
        ['1,3,10.00,20.00,30.00,40.00,0.9000,1,-1']
    """
    if det.tracker_id is None:
        return []
    return [f"{frame},{int(t)},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{s:.4f},{int(c) + 1},-1"
            for (x, y, w, h), s, c, t in zip(det.xywh, det.confidence, det.class_id, det.tracker_id)]


def _frame_number(item: Any) -> int:
    """1-based frame number: the video's own frame number (strides keep their gaps), else the item's position."""
    frame = getattr(item, "frame", None)
    return int(frame if frame is not None else item.index) + 1


class MotSink(BaseSink):
    """Tracks as one MOTChallenge text file (``frame,id,x,y,w,h,score,class+1,-1``), written atomically on close.

    Example:
        >>> with MotSink("tracks.txt") as sink:  # doctest: +SKIP
        ...     for out in predictor.track("clip.mp4"):
        ...         sink.add(out)
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None  # type: ignore[assignment]
        self.lines: list[str] = []  # None: keep the lines in memory only (``lines``), write nothing

    def add(self, outcome: Any) -> None:
        """Append the tracked boxes of one successful frame."""
        if outcome.error is None and isinstance(outcome.result, Detections):
            self.lines.extend(mot_lines(_frame_number(outcome.item), outcome.result))

    def rows(self) -> np.ndarray:
        """The lines so far as a float64 array (n, 9), the layout :mod:`unideploy.tools.evaluate.tracking` scores."""
        return np.array([[float(v) for v in ln.split(",")] for ln in self.lines], np.float64).reshape(-1, 9)

    def close(self) -> None:
        """Write the file (an empty file when no frame had a track); nothing without a path."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(line + "\n" for line in self.lines))


def _colour(track_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(track_id * 104729 + 11)
    return tuple(int(v) for v in rng.integers(40, 256, 3))  # type: ignore[return-value]


def draw_tracks(img: np.ndarray, det: Detections, trails: dict[int, deque] | None = None) -> np.ndarray:
    """A copy of ``img`` with each track's box, ``#id name score`` and (given ``trails``) its recent path."""
    out = img.copy()
    lw = max(1, round(sum(out.shape[:2]) / 2 * 0.003))
    ids = det.tracker_id if det.tracker_id is not None else np.full(len(det), -1)
    for (x1, y1, x2, y2), s, name, t in zip(det.xyxy, det.confidence, det.class_names, ids):
        col = _colour(int(t))
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), col, lw, cv2.LINE_AA)
        label = f"#{int(t)} {name} {s:.2f}"
        cv2.putText(out, label, (int(x1), max(int(y1) - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, max(lw / 3, 0.4), col,
                    max(lw - 1, 1), cv2.LINE_AA)
        if trails is not None and t >= 0:
            path = trails.setdefault(int(t), deque(maxlen=30))
            path.append((int((x1 + x2) / 2), int((y1 + y2) / 2)))
            if len(path) > 1:
                cv2.polylines(out, [np.array(path, np.int32).reshape(-1, 1, 2)], False, col, lw, cv2.LINE_AA)
    return out


class TrackVideoSink(VideoSink):
    """Annotated video of tracked frames: boxes coloured by identity, ``#id`` labels and the last 30 centres."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None) -> None:
        super().__init__(path, fps)
        self.trails: dict[int, deque] = {}

    def add(self, outcome: Any) -> None:
        """Draw one successful frame's tracks on its kept image and append it."""
        if outcome.error is None and outcome.image is not None and isinstance(outcome.result, Detections):
            self.write(draw_tracks(outcome.image, outcome.result, self.trails))
