#!/usr/bin/env python3
"""Segmentation, pose and oriented-box versions of the synthetic "shapes" data set.

Built on ``tools/make_shapes.py`` (same backgrounds, clutter, placement rules, painting and degradations):

* ``segment`` -- the detection images themselves (same seed, same RNG streams, byte-identical JPEGs), with
  instance masks: an object nothing occludes gets its exact polygon (a circle: a 96-gon, within 0.06 % of
  the radius) clipped to the image; an occluded object gets the outline of its visible part, traced on a
  4x raster of the exact geometry (its polygon minus every later object's), largest part only.
* ``pose`` -- stars (one class) among distractor shapes; the 5 keypoints are the star's outer tips, the
  top-most tip first, then clockwise on screen (so a horizontal flip maps them by ``flip_idx`` 0,4,3,2,1).
  Visibility: 2 visible, 1 inside the image but covered by a later object, 0 outside (x = y = 0).
* ``obb`` -- rectangles (aspect 1.8-4), isosceles triangles and crosses, fully inside the image, each with
  its exact minimum-area oriented box (OpenCV's rotating calipers on the exact vertices).

Output (Ultralytics + COCO), per task under ``OUT``::

    images/{train,val}/*.jpg   labels/{train,val}/*.txt   annotations/instances_{train,val}.json   data.yaml

Label lines: segment ``cls x1 y1 x2 y2 ...``; pose ``cls cx cy w h x1 y1 v1 ... x5 y5 v5``; obb
``cls x1 y1 x2 y2 x3 y3 x4 y4`` (all normalised).  COCO records add ``segmentation`` (polygons),
``keypoints`` / ``num_keypoints``, or ``segmentation`` = the 4 corners plus ``rbox`` [cx, cy, w, h, theta]
(OpenCV's ``minAreaRect`` angle converted to radians).

Usage::

    python tools/shape_tasks.py --task segment --out DIR --train N --val M --seed S
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_shapes as ms  # noqa: E402

TASKS = ("segment", "pose", "obb")
STREAM = {"segment": (), "pose": (11,), "obb": (12,)}  # segment = the detection images
POSE_NAMES = ["star"]
KPT_SHAPE = (5, 3)
FLIP_IDX = [0, 4, 3, 2, 1]
OBB_NAMES = ["rectangle", "triangle", "cross"]
CIRCLE_VERTICES = 96
RASTER = 4  # supersampling of the occluded-mask raster


# --------------------------------------------------------------------------- samplers
def _place(rng, r, w, h, margin):
    return float(rng.uniform(-margin * r, w + margin * r)), float(rng.uniform(-margin * r, h + margin * r))


def pose_sampler(rng, r_min, r_max, w, h) -> dict:
    """A star (label 0) half of the time, else a distractor shape of another class (label None)."""
    star = rng.random() < 0.5
    cls = 3 if star else int(rng.choice([0, 1, 2, 4, 5]))
    r = float(math.exp(rng.uniform(math.log(r_min * 1.2), math.log(r_max))))
    theta = float(rng.uniform(0, 2 * math.pi))
    cx, cy = _place(rng, r, w, h, 0.2)
    return {"cls": cls, "label": 0 if star else None, "r": r, "theta": theta, "cx": cx, "cy": cy,
            "pts": ms.shape_polygon(cls, r, theta)}


def obb_polygon(cls: int, r: float, theta: float, aspect: float) -> np.ndarray:
    """Vertices (relative to the centre) of OBB class ``cls``: half-length ``r``, elongation ``aspect``."""
    name = OBB_NAMES[cls]
    if name == "rectangle":
        b = r / aspect
        base = np.array([[r, b], [-r, b], [-r, -b], [r, -b]])
    elif name == "triangle":
        b = 1.6 * r / aspect
        base = np.array([[r, 0.0], [-0.6 * r, b], [-0.6 * r, -b]])
    else:
        return ms.shape_polygon(5, r, theta)
    c, s = math.cos(theta), math.sin(theta)
    return base @ np.array([[c, s], [-s, c]])


def obb_sampler(rng, r_min, r_max, w, h) -> dict:
    cls = int(rng.integers(0, len(OBB_NAMES)))
    aspect = float(rng.uniform(1.8, 4.0))
    r = float(math.exp(rng.uniform(math.log(r_min * 1.6), math.log(max(r_max, r_min * 2.4)))))
    theta = float(rng.uniform(0, 2 * math.pi))
    cx, cy = _place(rng, r, w, h, -1.42)  # the whole minimum-area box (corners <= r*sqrt(2) away) inside
    return {"cls": cls, "label": cls, "r": r, "theta": theta, "cx": cx, "cy": cy,
            "pts": obb_polygon(cls, r, theta, aspect)}


# --------------------------------------------------------------------------- geometry
def abs_polygon(o: dict) -> np.ndarray:
    """Exact vertices of a placed object in image coordinates (a circle as a CIRCLE_VERTICES-gon)."""
    if o["pts"] is None:
        a = np.arange(CIRCLE_VERTICES) * 2 * math.pi / CIRCLE_VERTICES
        return np.stack([o["cx"] + o["r"] * np.cos(a), o["cy"] + o["r"] * np.sin(a)], 1)
    return o["pts"] + [o["cx"], o["cy"]]


def clip_polygon(pts: np.ndarray, w: float, h: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a (possibly concave) polygon to the rectangle [0, w] x [0, h]."""
    out = [tuple(p) for p in pts]
    for axis, bound, keep_le in ((0, 0.0, False), (0, w, True), (1, 0.0, False), (1, h, True)):
        src, out = out, []
        if not src:
            break
        for i, cur in enumerate(src):
            prev = src[i - 1]
            cin = cur[axis] <= bound if keep_le else cur[axis] >= bound
            pin = prev[axis] <= bound if keep_le else prev[axis] >= bound
            if cin != pin:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(tuple(prev[k] + t * (cur[k] - prev[k]) for k in (0, 1)))
            if cin:
                out.append(cur)
    return np.asarray(out, np.float64).reshape(-1, 2)


def _raster(polys, x0: int, y0: int, cw: int, ch: int) -> np.ndarray:
    m = np.zeros((ch * RASTER, cw * RASTER), np.uint8)
    for p in polys:
        q = np.round(((p - [x0, y0]) * RASTER - 0.5) * ms.SCALE).astype(np.int32)
        cv2.fillPoly(m, [q], 1, cv2.LINE_8, ms.SHIFT)
    return m


def visible_polygon(objs: list, i: int, w: int, h: int) -> np.ndarray:
    """The instance polygon of ``objs[i]`` (see the module docstring), in image pixels."""
    o = objs[i]
    own = abs_polygon(o)
    later = [abs_polygon(p) for p in objs[i + 1:] if float((o["alpha"] * p["alpha"]).sum()) > 0]
    if not later:
        return clip_polygon(own, w, h)
    x0, y0 = int(math.floor(o["box"][0])), int(math.floor(o["box"][1]))
    cw, ch = int(math.ceil(o["box"][2])) - x0 + 1, int(math.ceil(o["box"][3])) - y0 + 1
    m = _raster([own], x0, y0, cw, ch) & (1 - _raster(later, x0, y0, cw, ch))
    m[:, (w - x0) * RASTER:] = 0  # outside the image
    m[(h - y0) * RASTER:, :] = 0
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.zeros((0, 2))
    c = max(contours, key=cv2.contourArea)
    c = cv2.approxPolyDP(c, 0.5, True).reshape(-1, 2).astype(np.float64)
    return (c + 0.5) / RASTER + [x0, y0]


def star_keypoints(o: dict, objs: list, i: int, w: int, h: int) -> np.ndarray:
    """(5, 3) tips of star ``objs[i]``: top-most first, clockwise on screen, with COCO visibility."""
    tips = o["pts"][0::2] + [o["cx"], o["cy"]]
    tips = np.roll(tips, -int(np.argmin(tips[:, 1])), axis=0)
    cover = np.zeros((h, w), np.float32)
    for p in objs[i + 1:]:
        cover = 1 - (1 - cover) * (1 - p["alpha"])
    kpts = np.zeros((5, 3))
    for k, (x, y) in enumerate(tips):
        if 0 <= x < w and 0 <= y < h:
            kpts[k] = (x, y, 1 if cover[int(y), int(x)] > 0.5 else 2)
    return kpts


def min_area_box(poly: np.ndarray) -> tuple[np.ndarray, list]:
    """(4, 2) corners and [cx, cy, w, h, theta (radians)] of the minimum-area rectangle around ``poly``."""
    (cx, cy), (bw, bh), ang = cv2.minAreaRect(poly.astype(np.float32))
    return cv2.boxPoints(((cx, cy), (bw, bh), ang)).astype(np.float64), [cx, cy, bw, bh, math.radians(ang)]


# --------------------------------------------------------------------------- one image, one split
def task_image(task: str, seed: int, split: str, index: int):
    """(image, [label dict, ...], jpeg quality) for ``task``; label dicts hold cls, box and the task's geometry."""
    if task == "segment":
        img, _, q, objs = ms.make_image(seed, split, index, return_objects=True)
    elif task == "pose":
        img, _, q, objs = ms.make_image(seed, split, index, pose_sampler, STREAM[task], return_objects=True)
    else:
        img, _, q, objs = ms.make_image(seed, split, index, obb_sampler, STREAM[task], min_inside=1.0,
                                        return_objects=True)
    h, w = img.shape[:2]
    labels = []
    for i, o in enumerate(objs):
        if task == "segment":
            poly = visible_polygon(objs, i, w, h)
            if len(poly) >= 3:
                labels.append({"cls": o["cls"], "box": o["box"], "poly": poly})
        elif task == "pose" and o["label"] is not None:
            labels.append({"cls": 0, "box": o["box"], "kpts": star_keypoints(o, objs, i, w, h)})
        elif task == "obb":
            corners, rbox = min_area_box(abs_polygon(o))
            labels.append({"cls": o["label"], "box": o["box"], "poly": corners, "rbox": rbox})
    return img, labels, q


def label_line(task: str, lab: dict, w: int, h: int) -> str:
    wh = np.array([w, h], np.float64)
    if task == "pose":
        x0, y0, x1, y1 = lab["box"]
        k = lab["kpts"].copy()
        k[:, :2] /= wh
        vals = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h, *k.reshape(-1)]
        return f"{lab['cls']} " + " ".join(f"{int(v)}" if j >= 4 and (j - 4) % 3 == 2 else f"{v:.6f}"
                                            for j, v in enumerate(vals))
    p = np.clip(lab["poly"] / wh, 0.0, 1.0) if task == "segment" else lab["poly"] / wh
    return f"{lab['cls']} " + " ".join(f"{v:.6f}" for v in p.reshape(-1))


def coco_annotation(task: str, lab: dict) -> dict:
    x0, y0, x1, y1 = lab["box"]
    bw, bh = round(x1 - x0, 2), round(y1 - y0, 2)
    ann = {"category_id": lab["cls"] + 1, "bbox": [round(x0, 2), round(y0, 2), bw, bh], "iscrowd": 0}
    if task == "pose":
        ann["keypoints"] = [round(float(v), 2) if j % 3 != 2 else int(v) for j, v in enumerate(lab["kpts"].reshape(-1))]
        ann["num_keypoints"] = int((lab["kpts"][:, 2] > 0).sum())
        ann["area"] = round(bw * bh, 4)
    else:
        ann["segmentation"] = [[round(float(v), 2) for v in lab["poly"].reshape(-1)]]
        ann["area"] = round(float(cv2.contourArea(lab["poly"].astype(np.float32))), 4)
    if task == "obb":
        ann["rbox"] = [round(float(v), 6) for v in lab["rbox"]]
    return ann


def names_for(task: str) -> list:
    return {"segment": ms.CLASS_NAMES, "pose": POSE_NAMES, "obb": OBB_NAMES}[task]


def coco_dict(task: str, records) -> dict:
    images, annotations = [], []
    for img_id, (fname, w, h, labels) in enumerate(sorted(records, key=lambda r: r[0]), 1):
        images.append({"id": img_id, "file_name": fname, "width": w, "height": h})
        for lab in labels:
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, **coco_annotation(task, lab)})
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(names_for(task))]
    if task == "pose":
        cats[0]["keypoints"] = [f"tip{k + 1}" for k in range(KPT_SHAPE[0])]
        cats[0]["skeleton"] = [[k + 1, (k + 1) % KPT_SHAPE[0] + 1] for k in range(KPT_SHAPE[0])]
    return {"info": {"description": f"unideploy synthetic shapes {task} data set"}, "licenses": [],
            "images": images, "annotations": annotations, "categories": cats}


def write_data_yaml(path: Path, task: str, root: str | None, train: str, val: str, comment: str = "") -> None:
    ms.write_data_yaml(path, root, train, val, names_for(task), comment)
    if task == "pose":
        with path.open("a") as fh:
            fh.write(f"kpt_shape: [{KPT_SHAPE[0]}, {KPT_SHAPE[1]}]\nflip_idx: {FLIP_IDX}\n")


def generate_split(out: Path, task: str, split: str, n: int, seed: int) -> list:
    img_dir, lbl_dir = out / "images" / split, out / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        img, labels, q = task_image(task, seed, split, i)
        h, w = img.shape[:2]
        stem = f"{split}_{i:05d}"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok
        (img_dir / f"{stem}.jpg").write_bytes(buf.tobytes())
        lines = [label_line(task, lab, w, h) for lab in labels]
        (lbl_dir / f"{stem}.txt").write_text("".join(f"{s}\n" for s in lines))
        records.append((f"{stem}.jpg", w, h, labels))
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco_dict(task, records)))
    return records


def generate(out: str | Path, task: str, n_train: int, n_val: int, seed: int = 0) -> dict:
    """Write the ``task`` data set under ``out`` (cleaned first); returns per-split statistics."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    out = Path(out).resolve()
    for sub in ("images", "labels", "annotations"):
        shutil.rmtree(out / sub, ignore_errors=True)
    stats = {}
    for split, n in (("train", n_train), ("val", n_val)):
        t0 = time.time()
        recs = generate_split(out, task, split, n, seed)
        counts = [0] * len(names_for(task))
        for *_, labels in recs:
            for lab in labels:
                counts[lab["cls"]] += 1
        stats[split] = {"images": n, "objects": sum(counts), "per_class": dict(zip(names_for(task), counts)),
                        "seconds": round(time.time() - t0, 2)}
        if task == "pose":
            v = np.concatenate([lab["kpts"][:, 2] for *_, labels in recs for lab in labels] or [np.zeros(0)])
            stats[split]["keypoints_by_visibility"] = {str(k): int((v == k).sum()) for k in (0, 1, 2)}
    write_data_yaml(out / "data.yaml", task, str(out), "images/train", "images/val")
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(json.dumps(generate(args.out, args.task, args.train, args.val, args.seed), indent=2))


if __name__ == "__main__":
    main()
