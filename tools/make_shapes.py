#!/usr/bin/env python3
"""Deterministic generator of the synthetic "shapes" detection data set.

Six visually distinct classes (circle, square, triangle, star, hexagon, cross)
are drawn with random size, colour, shading and rotation on cluttered, noisy
backgrounds (colour gradients, low-frequency blotches, lines, curves, elongated
ellipses and soft blobs that belong to no class, Gaussian noise, blur, JPEG
artefacts).  Objects may overlap a little (later objects occlude earlier ones),
but every labelled object keeps at least ``MIN_VISIBLE`` of its area visible and
at least ``MIN_INSIDE`` of its area inside the image.  Images have random sizes
and aspect ratios (sides between 240 and 640 px, landscape and portrait).

Each box is the tight axis-aligned box of the drawn shape's geometry (computed
from the exact, sub-pixel polygon / circle), clipped to the image.

Output layout (Ultralytics + COCO)::

    DIR/images/{train,val}/*.jpg
    DIR/labels/{train,val}/*.txt            # YOLO: cls cx cy w h (normalised)
    DIR/annotations/instances_{train,val}.json
    DIR/data.yaml                           # path, train, val, names {0: ...}

COCO conventions: images in sorted file-name order, ``id`` = 1-based position in
that order, ``file_name`` = bare file name; ``category_id`` = class index + 1;
``bbox`` = [x, y, w, h] in pixels; ``area`` = w * h; ``iscrowd`` = 0.

The output depends only on ``--seed`` and on the split/index of each image (each
image has its own RNG stream), so the same command always writes the same data.

Usage::

    python tools/make_shapes.py --out DIR --train N --val M --seed S

Only numpy and OpenCV are needed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

CLASS_NAMES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
SPLIT_IDS = {"train": 1, "val": 2, "test": 3}

MIN_SIDE, MAX_SIDE = 240, 640
# Objects are sized relative to the image so that, once the long side is
# letterboxed to REF_IMGSZ (the training size), the smallest object is still
# about MIN_OBJ_AT_REF pixels across.
REF_IMGSZ = 320
MIN_OBJ_AT_REF = 20.0
MIN_VISIBLE = 0.70  # fraction of an object's area that must stay visible
MIN_INSIDE = 0.85  # fraction of an object's area that must lie inside the image
MAX_BOX_IOU = 0.35  # max IoU between two labelled boxes
SHIFT = 4  # sub-pixel precision bits for OpenCV drawing
SCALE = 1 << SHIFT


# --------------------------------------------------------------------------- geometry
def _regular_polygon(n: int, r: float, theta: float) -> np.ndarray:
    a = theta + np.arange(n) * 2 * math.pi / n
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def shape_polygon(cls: int, r: float, theta: float) -> np.ndarray | None:
    """Vertices (relative to the centre) of class ``cls`` with size ``r``; None for a circle."""
    name = CLASS_NAMES[cls]
    if name == "circle":
        return None
    if name == "square":
        return _regular_polygon(4, r, theta)
    if name == "triangle":
        return _regular_polygon(3, r, theta)
    if name == "hexagon":
        return _regular_polygon(6, r, theta)
    if name == "star":
        outer = _regular_polygon(5, r, theta)
        inner = _regular_polygon(5, 0.42 * r, theta + math.pi / 5)
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = outer, inner
        return pts
    if name == "cross":  # plus sign, arms of half-width 0.3 r
        w = 0.3 * r
        base = np.array(
            [[w, -r], [w, -w], [r, -w], [r, w], [w, w], [w, r],
             [-w, r], [-w, w], [-r, w], [-r, -w], [-w, -w], [-w, -r]], dtype=np.float64)
        c, s = math.cos(theta), math.sin(theta)
        return base @ np.array([[c, s], [-s, c]])
    raise ValueError(name)


def shape_bounds(cls: int, r: float, theta: float, cx: float, cy: float, pts=False):
    """Axis-aligned bounds of the exact shape; ``pts`` (relative vertices, None = circle) overrides ``cls``."""
    pts = shape_polygon(cls, r, theta) if pts is False else pts
    if pts is None:
        return cx - r, cy - r, cx + r, cy + r
    return cx + pts[:, 0].min(), cy + pts[:, 1].min(), cx + pts[:, 0].max(), cy + pts[:, 1].max()


def shape_alpha(cls: int, r: float, theta: float, cx: float, cy: float, h: int, w: int, pts=False) -> np.ndarray:
    """Anti-aliased float32 coverage mask (0..1) of the shape; ``pts`` as in :func:`shape_bounds`."""
    m = np.zeros((h, w), np.uint8)
    pts = shape_polygon(cls, r, theta) if pts is False else pts
    if pts is None:
        cv2.circle(m, (int(round(cx * SCALE)), int(round(cy * SCALE))), int(round(r * SCALE)), 255, -1,
                   cv2.LINE_AA, SHIFT)
    else:
        p = np.round((pts + [cx, cy]) * SCALE).astype(np.int32)
        cv2.fillPoly(m, [p], 255, cv2.LINE_AA, SHIFT)
    return m.astype(np.float32) / 255.0


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --------------------------------------------------------------------------- background
def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(40, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def make_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # linear gradient between two colours at a random angle
    c0, c1 = _random_colour(rng), _random_colour(rng)
    if rng.random() < 0.5:  # often keep the two ends close for a calmer gradient
        c1 = np.clip(c0 + rng.normal(0, 40, 3), 0, 255).astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(ang) + yy * math.sin(ang))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    # low-frequency colour blotches
    gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    blot = rng.normal(0, rng.uniform(5, 30), (gh, gw, 3)).astype(np.float32)
    img += cv2.resize(blot, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255)

    # soft irregular blobs (thresholded smooth noise), not one of the classes
    for _ in range(int(rng.integers(0, 4))):
        bh, bw = int(rng.integers(30, 120)), int(rng.integers(30, 120))
        noise = cv2.GaussianBlur(rng.random((bh, bw)).astype(np.float32), (0, 0), rng.uniform(4, 9))
        noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
        a = np.clip((noise - 0.55) * 6, 0, 1) * rng.uniform(0.3, 0.8)
        y0, x0 = int(rng.integers(-bh // 3, h - bh // 2)), int(rng.integers(-bw // 3, w - bw // 2))
        ys, xs = slice(max(y0, 0), min(y0 + bh, h)), slice(max(x0, 0), min(x0 + bw, w))
        a = a[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0, None]
        img[ys, xs] = img[ys, xs] * (1 - a) + _random_colour(rng) * a
    img = img.astype(np.uint8)

    # clutter: elongated ellipses, straight lines, random curves, small dots
    for _ in range(int(rng.integers(0, 4))):
        ax0 = float(rng.uniform(15, 60))
        ax1 = ax0 / rng.uniform(3.0, 6.0)  # clearly elongated: never a circle
        cen = (int(rng.integers(0, w) * SCALE), int(rng.integers(0, h) * SCALE))
        cv2.ellipse(img, cen, (int(ax0 * SCALE), int(ax1 * SCALE)), float(rng.uniform(0, 180)), 0, 360,
                    _random_colour(rng).tolist(), -1 if rng.random() < 0.6 else int(rng.integers(1, 3)),
                    cv2.LINE_AA, SHIFT)
    for _ in range(int(rng.integers(1, 8))):
        p0 = (int(rng.integers(-50, w + 50)), int(rng.integers(-50, h + 50)))
        p1 = (int(rng.integers(-50, w + 50)), int(rng.integers(-50, h + 50)))
        cv2.line(img, p0, p1, _random_colour(rng).tolist(), int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        n = int(rng.integers(4, 9))
        pts = np.cumsum(rng.normal(0, 30, (n, 2)), 0) + [rng.integers(0, w), rng.integers(0, h)]
        cv2.polylines(img, [pts.astype(np.int32)], False, _random_colour(rng).tolist(),
                      int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 12))):
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 4)),
                   _random_colour(rng).tolist(), -1, cv2.LINE_AA)
    return img


def _contrasting_colour(rng: np.random.Generator, local: np.ndarray) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(30):
        c = _random_colour(rng)
        d = float(np.linalg.norm(c - local))
        if d >= 90:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


# --------------------------------------------------------------------------- one image
def detect_sampler(rng: np.random.Generator, r_min: float, r_max: float, w: int, h: int) -> dict:
    """One random object of the detection set: class, size, rotation, centre and exact vertices."""
    cls = int(rng.integers(0, len(CLASS_NAMES)))
    r = float(math.exp(rng.uniform(math.log(r_min), math.log(r_max))))
    theta = float(rng.uniform(0, 2 * math.pi))
    cx, cy = float(rng.uniform(-0.2 * r, w + 0.2 * r)), float(rng.uniform(-0.2 * r, h + 0.2 * r))
    return {"cls": cls, "r": r, "theta": theta, "cx": cx, "cy": cy, "pts": shape_polygon(cls, r, theta)}


def make_image(seed: int, split: str, index: int, sampler=detect_sampler, stream: tuple = (),
               min_inside: float = MIN_INSIDE, return_objects: bool = False):
    """Return (bgr image uint8, [(cls, x0, y0, x1, y1), ...], jpeg quality).

    ``sampler(rng, r_min, r_max, w, h)`` draws one candidate object (a dict with ``cls``, ``r``, ``theta``,
    ``cx``, ``cy`` and ``pts``, the exact vertices relative to the centre or None for a circle); ``stream``
    is appended to the RNG seed so other tasks get their own images.  With ``return_objects`` the placed
    objects (their geometry, ``alpha`` coverage and ``vis`` coverage left after later objects) come fourth.
    The defaults give the detection set, byte for byte.
    """
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, *stream])
    long_side = int(rng.integers(400, MAX_SIDE + 1))
    short_side = int(rng.integers(MIN_SIDE, long_side + 1))
    w, h = (long_side, short_side) if rng.random() < 0.55 else (short_side, long_side)
    img = make_background(rng, h, w).astype(np.float32)

    ref_scale = REF_IMGSZ / max(w, h)
    r_min = 0.5 * MIN_OBJ_AT_REF / ref_scale / 0.75  # narrowest box side is >= 0.707 * 2r (square)
    r_max = max(r_min * 1.5, 0.24 * min(w, h))

    n_target = int(rng.integers(1, 9))
    objs = []  # dicts: cls, box, alpha (float mask), area
    occ = np.zeros((h, w), np.float32)  # union of placed objects' coverage
    for _ in range(n_target * 8):
        if len(objs) >= n_target:
            break
        cand = sampler(rng, r_min, r_max, w, h)
        cls, r, theta, cx, cy, pts = (cand[k] for k in ("cls", "r", "theta", "cx", "cy", "pts"))
        x0, y0, x1, y1 = shape_bounds(cls, r, theta, cx, cy, pts)
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))
        if box[2] - box[0] < 4 or box[3] - box[1] < 4:
            continue
        # full (unclipped) area analytically via a mask on a padded canvas
        pad = int(math.ceil(r)) + 2
        full = shape_alpha(cls, r, theta, cx + pad, cy + pad, h + 2 * pad, w + 2 * pad, pts)
        alpha = full[pad:pad + h, pad:pad + w]
        area_full, area_in = float(full.sum()), float(alpha.sum())
        if area_full <= 0 or area_in / area_full < min_inside:
            continue
        if any(box_iou(box, o["box"]) > MAX_BOX_IOU for o in objs):
            continue
        # the new object is drawn on top: every earlier object must stay visible enough
        ok = True
        for o in objs:
            vis = float((o["vis"] * (1 - alpha)).sum())
            if vis / o["area"] < MIN_VISIBLE:
                ok = False
                break
        if not ok:
            continue
        for o in objs:
            o["vis"] = o["vis"] * (1 - alpha)
        objs.append({**cand, "box": box, "vis": alpha.copy(), "area": area_full, "alpha": alpha})
        occ = np.maximum(occ, alpha)

    # paint objects in placement order (later ones on top)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for o in objs:
        x0, y0, x1, y1 = (int(v) for v in o["box"])
        local = img[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].reshape(-1, 3).mean(0)
        col = _contrasting_colour(rng, local)
        # shading: a linear gradient across the object plus a little texture
        g = rng.uniform(0, 2 * math.pi)
        shade = ((xx - o["cx"]) * math.cos(g) + (yy - o["cy"]) * math.sin(g)) / o["r"]
        layer = col[None, None] + (rng.uniform(0, 30) * shade)[..., None]
        if rng.random() < 0.3:
            layer = layer + rng.normal(0, rng.uniform(3, 12), (h, w, 1)).astype(np.float32)
        a = o["alpha"][..., None]
        img = img * (1 - a) + np.clip(layer, 0, 255) * a

    # a few thin lines on top of everything (may cross objects)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 3))):
        p0 = (int(rng.integers(-50, w + 50)), int(rng.integers(-50, h + 50)))
        p1 = (int(rng.integers(-50, w + 50)), int(rng.integers(-50, h + 50)))
        cv2.line(img, p0, p1, _random_colour(rng).tolist(), 1, cv2.LINE_AA)

    # sensor-ish degradations: blur, Gaussian noise, JPEG artefacts
    img = img.astype(np.float32)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.2))
    img += rng.normal(0, rng.uniform(2, 9), img.shape).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:  # double compression: a strong pass first
        _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 45))])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    quality = int(rng.integers(55, 86))
    boxes = [(o["cls"], *o["box"]) for o in objs]
    if return_objects:
        return img, boxes, quality, objs
    return img, boxes, quality


# --------------------------------------------------------------------------- writers
def coco_dict(records, names=CLASS_NAMES) -> dict:
    """records: list of (file_name, width, height, [(cls, x0, y0, x1, y1), ...]) in any order."""
    images, annotations = [], []
    ann_id = 1
    for img_id, (fname, w, h, boxes) in enumerate(sorted(records, key=lambda r: r[0]), 1):
        images.append({"id": img_id, "file_name": fname, "width": w, "height": h})
        for cls, x0, y0, x1, y1 in boxes:
            bw, bh = round(x1 - x0, 2), round(y1 - y0, 2)
            annotations.append({"id": ann_id, "image_id": img_id, "category_id": cls + 1,
                                "bbox": [round(x0, 2), round(y0, 2), bw, bh],
                                "area": round(bw * bh, 4), "iscrowd": 0})
            ann_id += 1
    return {
        "info": {"description": "unideploy synthetic shapes detection data set"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(names)],
    }


def yolo_lines(boxes, w: int, h: int) -> str:
    out = []
    for cls, x0, y0, x1, y1 in boxes:
        out.append(f"{cls} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
    return "\n".join(out) + ("\n" if out else "")


def write_data_yaml(path: Path, root: str | None, train: str, val: str, names=CLASS_NAMES, comment: str = ""):
    lines = [f"# {c}" for c in comment.splitlines()] if comment else []
    if root is not None:
        lines.append(f"path: {root}")
    lines += [f"train: {train}", f"val: {val}", "names:"]
    lines += [f"  {i}: {n}" for i, n in enumerate(names)]
    path.write_text("\n".join(lines) + "\n")


def generate_split(out: Path, split: str, n: int, seed: int) -> list:
    img_dir, lbl_dir = out / "images" / split, out / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        img, boxes, q = make_image(seed, split, i)
        h, w = img.shape[:2]
        fname = f"{split}_{i:05d}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok
        (img_dir / fname).write_bytes(buf.tobytes())
        (lbl_dir / f"{split}_{i:05d}.txt").write_text(yolo_lines(boxes, w, h))
        records.append((fname, w, h, boxes))
    ann_dir = out / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    (ann_dir / f"instances_{split}.json").write_text(json.dumps(coco_dict(records)))
    return records


def generate(out: str | Path, n_train: int, n_val: int, seed: int = 0, clean: bool = True) -> dict:
    out = Path(out).resolve()
    if clean:
        for sub in ("images", "labels", "annotations"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for cache in out.glob("labels/*.cache"):
            cache.unlink()
    out.mkdir(parents=True, exist_ok=True)
    stats = {}
    for split, n in (("train", n_train), ("val", n_val)):
        t0 = time.time()
        recs = generate_split(out, split, n, seed)
        counts = [0] * len(CLASS_NAMES)
        for _, _, _, boxes in recs:
            for b in boxes:
                counts[b[0]] += 1
        stats[split] = {"images": n, "objects": sum(counts), "per_class": dict(zip(CLASS_NAMES, counts)),
                        "seconds": round(time.time() - t0, 2)}
    write_data_yaml(out / "data.yaml", str(out), "images/train", "images/val")
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--train", type=int, default=1000, help="number of training images")
    ap.add_argument("--val", type=int, default=150, help="number of validation images")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    stats = generate(args.out, args.train, args.val, args.seed)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
