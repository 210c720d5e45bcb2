"""Synthetic inputs for the tracking tests: detection sequences with known motion, and short videos of shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

__all__ = ["detection_sequence", "shapes_video", "ultralytics_mot_rows"]

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def detection_sequence(seed: int, frames: int = 120, objects: int = 12, size: float = 640.0):
    """Per-frame (xyxy float32, conf float32, class int64) of objects that move, cross, vanish for a few frames
    (missed detections), enter late and leave early, with jittered boxes, low-score detections and clutter."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.1 * size, 0.9 * size, (objects, 2))
    vel = rng.normal(0, 4, (objects, 2))
    wh = rng.uniform(20, 80, (objects, 2))
    cls = rng.integers(0, 3, objects)
    start = rng.integers(0, frames // 2, objects)
    end = start + rng.integers(20, frames, objects)
    gap = rng.integers(0, frames, objects)  # each object is missed for up to 6 frames from here
    out = []
    for f in range(frames):
        vel += rng.normal(0, 0.3, vel.shape)
        pos += vel
        alive = (start <= f) & (f < end) & ~((gap <= f) & (f < gap + rng.integers(0, 7, objects)))
        alive &= rng.random(objects) > 0.05
        boxes = np.concatenate([pos - wh / 2, pos + wh / 2], 1)[alive] + rng.normal(0, 1.5, (alive.sum(), 4))
        conf = rng.uniform(0.05, 0.95, alive.sum())
        k = int(rng.integers(0, 3))
        corner = rng.uniform(0, size, (k, 2))
        clutter = np.concatenate([corner, corner + rng.uniform(5, 40, (k, 2))], 1)
        out.append((np.concatenate([boxes, clutter]).astype(np.float32),
                    np.concatenate([conf, rng.uniform(0.05, 0.4, k)]).astype(np.float32),
                    np.concatenate([cls[alive], rng.integers(0, 3, k)]).astype(np.int64)))
    return out


def shapes_video(path: Path, frames: int = 30, size: tuple[int, int] = (320, 240), seed: int = 0,
                 jitter: float = 2.0) -> Path:
    """A short MJPG video of shapes (the demo model's classes) moving across a cluttered background: two cross,
    one enters, one leaves; the camera shakes by up to ``jitter`` pixels."""
    sys.path.insert(0, str(TOOLS))
    try:
        import make_shapes as ms
    finally:
        sys.path.remove(str(TOOLS))
    rng = np.random.default_rng(seed)
    w, h = size
    pad = 16
    background = ms.make_background(rng, h + 2 * pad, w + 2 * pad)
    # (class, radius, start centre, velocity per frame)
    objects = [(0, 22, (40, 60), (7, 3)), (1, 20, (280, 70), (-7, 3)), (3, 24, (160, 190), (0, -1.5)),
               (4, 20, (-30, 150), (6, 0)), (5, 20, (250, 200), (4, 1))]
    colours = [ms._contrasting_colour(rng, background.reshape(-1, 3).mean(0)) for _ in objects]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    for f in range(frames):
        dx, dy = (rng.uniform(-jitter, jitter, 2) if jitter else (0.0, 0.0))
        canvas = background.astype(np.float32).copy()
        for (c, r, (x0, y0), (vx, vy)), col in zip(objects, colours):
            cx, cy = x0 + vx * f + pad + dx, y0 + vy * f + pad + dy
            a = ms.shape_alpha(c, r, 0.3, cx, cy, h + 2 * pad, w + 2 * pad)[..., None]
            canvas = canvas * (1 - a) + col * a
        frame = canvas[pad:pad + h, pad:pad + w].clip(0, 255).astype(np.uint8)
        writer.write(frame)
    writer.release()
    return path


def ultralytics_mot_rows(model: str, video: str, tracker: str, **kwargs) -> np.ndarray:
    """Ultralytics' ``YOLO(model).track`` over ``video`` as MOTChallenge rows (frame,id,x,y,w,h,score,class+1,-1),
    frames 1-based; boxes Ultralytics returns without an id (no confirmed track on that frame) are left out."""
    from ultralytics import YOLO

    rows = []
    for f, r in enumerate(YOLO(model, task="detect").track(video, stream=True, tracker=f"{tracker}.yaml",
                                                            verbose=False, **kwargs), 1):
        b = r.boxes
        if b.id is None:
            continue
        for (x1, y1, x2, y2), s, c, t in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist(), b.id.tolist()):
            rows.append([f, t, x1, y1, x2 - x1, y2 - y1, s, c + 1, -1])
    return np.array(rows, np.float64).reshape(-1, 9)
