#!/usr/bin/env python3
"""Deterministic generator of tracking sequences: videos of moving shapes with ground-truth tracks.

The shapes are the demo detector's six classes, drawn with ``tools/make_shapes.py`` (imported, not copied) on one of
its cluttered backgrounds. Each sequence has:

* **crossings**: pairs of objects whose paths are aimed at the same point at the same frame (the later one in drawing
  order passes in front);
* **occlusions**: by each other at the crossings, and behind an occluder bar (not a class) that hides them fully for a
  few frames;
* **objects entering and leaving**: every object starts and ends where its path takes it, often outside the frame,
  and some appear or vanish inside it;
* **speed changes**: each object's velocity changes once or twice (faster, slower, a turn);
* **camera jitter**: the view shakes by up to ``--jitter`` pixels a frame and pans slowly;
* a slow spin of each shape, per-frame sensor noise and lossy encoding.

Output (MOTChallenge layout, one folder per sequence)::

    OUT/<name>/seqinfo.ini       [Sequence] name, imDir, frameRate, seqLength, imWidth, imHeight, imExt,
                                 plus video=<name>.mp4 when the frames are a video, classNames=circle,...
    OUT/<name>/gt/gt.txt         frame,id,x,y,w,h,consider,class+1,visibility   (frame and id 1-based)
    OUT/<name>/img1/000001.jpg   (--format img1 or both)
    OUT/<name>/<name>.mp4        (--format video or both; mp4v)

A ground-truth box is the tight box of the shape's full geometry, clipped to the frame (as in ``make_shapes``);
``visibility`` is the fraction of the shape's area that is inside the frame and not hidden by the occluder or by
shapes drawn over it; ``consider`` is 0 where that is below ``MIN_VISIBLE`` (an evaluation ignores the box, and
any predicted box matching it). The output depends only on ``--seed`` and the sequence index.

Usage::

    python tools/make_tracks.py --out DIR --sequences 3 --frames 120 --seed 0 [--size 480x320] [--format video]

Only numpy and OpenCV are needed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_shapes as ms  # noqa: E402

__all__ = ["generate", "make_sequence", "write_sequence"]

MIN_VISIBLE = 0.2  # below this visible fraction a ground-truth box is marked "do not consider"
MIN_SIDE = 2.0  # boxes clipped to less than this (pixels) are not written


@dataclass
class Track:
    """One object's path: class, size, spin, when it is on screen, and a velocity per frame."""

    cls: int
    r: float
    theta: float
    spin: float
    start: int
    end: int
    pos0: np.ndarray  # world position at ``start``
    vel: np.ndarray  # (frames, 2): velocity at each frame (speed changes included)
    colour: np.ndarray
    shade: float

    def position(self, f: int) -> np.ndarray:
        return self.pos0 + self.vel[self.start:f].sum(0)


def _velocities(rng: np.random.Generator, frames: int, speed: float) -> np.ndarray:
    """A velocity per frame that changes once or twice: faster, slower or turned."""
    ang = rng.uniform(0, 2 * math.pi)
    v = np.array([math.cos(ang), math.sin(ang)]) * speed
    out = np.empty((frames, 2))
    changes = sorted(rng.integers(frames // 6, frames - 5, int(rng.integers(1, 3))).tolist())
    f0 = 0
    for c in changes + [frames]:
        out[f0:c] = v
        f0 = c
        turn = rng.uniform(-0.8, 0.8)
        scale = rng.choice([0.4, 0.6, 1.5, 2.0])
        rot = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
        v = np.clip(rot @ v * scale, -3 * speed, 3 * speed)
    return out


def make_sequence(seed: int, index: int, frames: int = 120, size: tuple[int, int] = (480, 320),
                  objects: int = 8, jitter: float = 2.0):
    """Plan one sequence: (background, tracks, camera offsets (frames, 2), occluder rectangle or None).

    Positions are world coordinates: a frame shows the background window at the camera offset.
    """
    rng = np.random.default_rng([seed, 7, index])
    w, h = size
    scale = ms.REF_IMGSZ / max(w, h)  # the demo detector letterboxes the long side to REF_IMGSZ
    r_min = 0.5 * ms.MIN_OBJ_AT_REF / scale / 0.75 * 1.2
    r_max = max(1.6 * r_min, 0.12 * min(w, h))
    pan = rng.normal(0, 0.3, 2)
    shake = rng.uniform(-jitter, jitter, (frames, 2)) if jitter else np.zeros((frames, 2))
    cam = np.arange(frames)[:, None] * pan + shake
    margin = int(math.ceil(np.abs(cam).max())) + 4
    background = ms.make_background(rng, h + 2 * margin, w + 2 * margin)
    mean = background.reshape(-1, 3).mean(0)
    tracks: list[Track] = []
    for k in range(objects):
        cls = int(rng.integers(0, len(ms.CLASS_NAMES)))
        r = float(rng.uniform(r_min, r_max))
        speed = float(rng.uniform(1.5, 5.0))
        vel = _velocities(rng, frames, speed)
        start = int(rng.integers(0, frames // 3)) if rng.random() < 0.6 else 0
        end = frames if rng.random() < 0.6 else int(rng.integers(start + frames // 3, frames + 1))
        lo, hi = (max(start, tracks[-1].start) + 6, min(end, tracks[-1].end) - 6) if tracks else (0, 0)
        if k % 3 == 1 and tracks and hi > lo:  # aim at the previous object: the two meet at frame ``meet``
            meet = int(rng.integers(lo, hi))
            pos0 = tracks[-1].position(meet) - vel[start:meet].sum(0)
        elif rng.random() < 0.5:  # enter from outside the frame, heading inwards
            side = rng.integers(0, 4)
            pos0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
            pos0[side % 2] = -1.2 * r if side < 2 else (w if side % 2 == 0 else h) + 1.2 * r
            centre = np.array([w / 2, h / 2]) - pos0
            ang = math.atan2(centre[1], centre[0]) - math.atan2(vel[start, 1], vel[start, 0])
            rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
            vel = vel @ rot.T
        else:
            pos0 = np.array([rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)])
        tracks.append(Track(cls, r, float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(-0.03, 0.03)), start, end,
                            pos0, vel, ms._contrasting_colour(rng, mean), float(rng.uniform(0, 30))))
    occluder = None
    if rng.random() < 0.8:  # a vertical bar the objects pass behind
        bw = int(rng.uniform(0.8, 1.5) * r_max)
        x0 = int(rng.uniform(0.25 * w, 0.75 * w - bw))
        occluder = (x0, 0, x0 + bw, h, ms._random_colour(rng))
    return background, tracks, cam, occluder, margin


def _shape_area(t: Track, theta: float) -> float:
    pts = ms.shape_polygon(t.cls, t.r, theta)
    if pts is None:
        return math.pi * t.r * t.r
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def render(seed: int, index: int, frames: int = 120, size: tuple[int, int] = (480, 320), objects: int = 8,
           jitter: float = 2.0):
    """Yield (frame BGR uint8, ground-truth rows [(track id, x, y, w, h, consider, class, visibility)]) per frame."""
    background, tracks, cam, occluder, margin = make_sequence(seed, index, frames, size, objects, jitter)
    rng = np.random.default_rng([seed, 8, index])
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for f in range(frames):
        ox, oy = cam[f]
        x0, y0 = int(round(margin + ox)), int(round(margin + oy))
        img = background[y0:y0 + h, x0:x0 + w].astype(np.float32)
        sx, sy = x0 - margin, y0 - margin  # world -> frame: subtract the (integer) camera offset
        layers = []
        for tid, t in enumerate(tracks, 1):
            if not t.start <= f < t.end:
                continue
            cx, cy = t.position(f) - (sx, sy)
            theta = t.theta + t.spin * f
            bx0, by0, bx1, by1 = ms.shape_bounds(t.cls, t.r, theta, cx, cy)
            box = (max(bx0, 0.0), max(by0, 0.0), min(bx1, float(w)), min(by1, float(h)))
            if box[2] - box[0] < MIN_SIDE or box[3] - box[1] < MIN_SIDE:
                continue
            alpha = ms.shape_alpha(t.cls, t.r, theta, cx, cy, h, w)
            layers.append((tid, t, box, alpha, _shape_area(t, theta), cx, cy))
        cover = np.zeros((h, w), np.float32)  # what hides a shape: the occluder and the shapes drawn after it
        if occluder is not None:
            cover[:, occluder[0]:occluder[2]] = 1.0
        rows = []
        for tid, t, box, alpha, area, cx, cy in reversed(layers):
            vis = float((alpha * (1 - cover)).sum()) / max(area, 1e-6)
            cover = np.maximum(cover, alpha)
            rows.append((tid, box[0], box[1], box[2] - box[0], box[3] - box[1], int(vis >= MIN_VISIBLE), t.cls,
                         min(vis, 1.0)))
        for tid, t, box, alpha, area, cx, cy in layers:
            shade = ((xx - cx) * 0.7 + (yy - cy) * 0.7) / t.r
            layer = t.colour[None, None] + (t.shade * shade)[..., None]
            a = alpha[..., None]
            img = img * (1 - a) + np.clip(layer, 0, 255) * a
        if occluder is not None:
            img[:, occluder[0]:occluder[2]] = occluder[4]
        img += rng.normal(0, 3.0, img.shape).astype(np.float32)
        yield np.clip(img, 0, 255).astype(np.uint8), sorted(rows)


def write_sequence(out: str | Path, name: str, seed: int, index: int, frames: int = 120,
                   size: tuple[int, int] = (480, 320), objects: int = 8, jitter: float = 2.0, fps: float = 10.0,
                   fmt: str = "video", quality: int = 85) -> dict:
    """Write one sequence in MOTChallenge layout under ``out/name``; returns its statistics."""
    root = Path(out) / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "gt").mkdir(parents=True)
    w, h = size
    writer = None
    if fmt in ("video", "both"):
        writer = cv2.VideoWriter(str(root / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if fmt in ("img1", "both"):
        (root / "img1").mkdir()
    lines, ids, hidden = [], set(), 0
    for f, (img, rows) in enumerate(render(seed, index, frames, size, objects, jitter), 1):
        if writer is not None:
            writer.write(img)
        if fmt in ("img1", "both"):
            cv2.imwrite(str(root / "img1" / f"{f:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        for tid, x, y, bw, bh, consider, cls, vis in rows:
            lines.append(f"{f},{tid},{x:.2f},{y:.2f},{bw:.2f},{bh:.2f},{consider},{cls + 1},{vis:.3f}")
            ids.add(tid)
            hidden += consider == 0
    if writer is not None:
        writer.release()
    (root / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    info = ["[Sequence]", f"name={name}", "imDir=img1", f"frameRate={fps:g}", f"seqLength={frames}",
            f"imWidth={w}", f"imHeight={h}", "imExt=.jpg", f"classNames={','.join(ms.CLASS_NAMES)}"]
    if writer is not None:
        info.insert(2, f"video={name}.mp4")
    (root / "seqinfo.ini").write_text("\n".join(info) + "\n")
    return {"name": name, "frames": frames, "tracks": len(ids), "boxes": len(lines), "ignored_boxes": hidden}


def generate(out: str | Path, sequences: int = 3, frames: int = 120, seed: int = 0, size: tuple[int, int] = (480, 320),
             objects: int = 8, jitter: float = 2.0, fmt: str = "video", prefix: str = "shapes") -> list[dict]:
    """Write ``sequences`` sequences ``<prefix>-01`` ... under ``out``; returns their statistics."""
    Path(out).mkdir(parents=True, exist_ok=True)
    return [write_sequence(out, f"{prefix}-{i + 1:02d}", seed, i, frames, size, objects, jitter, fmt=fmt)
            for i in range(sequences)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (one sub-folder per sequence)")
    ap.add_argument("--sequences", type=int, default=3)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--objects", type=int, default=8, help="objects per sequence (not all on screen at once)")
    ap.add_argument("--size", default="480x320", help="WIDTHxHEIGHT")
    ap.add_argument("--jitter", type=float, default=2.0, help="camera shake, pixels per frame")
    ap.add_argument("--format", choices=["video", "img1", "both"], default="video")
    ap.add_argument("--prefix", default="shapes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    stats = generate(args.out, args.sequences, args.frames, args.seed, (w, h), args.objects, args.jitter,
                     args.format, args.prefix)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
