#!/usr/bin/env python3
"""The demo "shapes" validation data drawn at 1280-4000 px: an eval set of large JPEGs for ``--fast-decode``.

The images come from ``tools/make_shapes.py``'s own ``make_image`` (same classes, clutter, noise, blur and JPEG
artefacts; objects sized relative to the image as there), with its side limits raised from 240-640 px to
``--min-side``-``--max-side`` (default 1280-4000). ``make_image`` draws the long side from 400 px up, so an index
whose long side falls below ``--min-side`` is skipped; the output depends only on ``--seed`` (default 11, unlike
the demo set's 0) and is the same on every run. ``tools/make_shapes.py`` and its output are not touched.

Output layout (as make_shapes.py's)::

    DIR/images/val/*.jpg   DIR/labels/val/*.txt   DIR/annotations/instances_val.json   DIR/data.yaml

Usage::

    python tools/make_large_shapes.py --out /tmp/shapes_large --n 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_shapes  # noqa: E402  (tools/ is not a package)


def generate(out: str | Path, n: int, seed: int = 11, min_side: int = 1280, max_side: int = 4000,
             log: bool = False) -> dict:
    """Write ``n`` large validation images with labels under ``out``; returns counts and sizes."""
    out = Path(out).resolve()
    img_dir, lbl_dir, ann_dir = out / "images" / "val", out / "labels" / "val", out / "annotations"
    for d in (img_dir, lbl_dir, ann_dir):
        d.mkdir(parents=True, exist_ok=True)
    saved = make_shapes.MIN_SIDE, make_shapes.MAX_SIDE
    make_shapes.MIN_SIDE, make_shapes.MAX_SIDE = min_side, max_side
    records, index, t0 = [], 0, time.time()
    try:
        while len(records) < n:
            try:
                img, boxes, quality = make_shapes.make_image(seed, "val", index)
            except ValueError:  # the long side was drawn below min_side: no short side fits
                index += 1
                continue
            h, w = img.shape[:2]
            name = f"large_{index:05d}.jpg"
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            (img_dir / name).write_bytes(buf.tobytes())
            (lbl_dir / f"large_{index:05d}.txt").write_text(make_shapes.yolo_lines(boxes, w, h))
            records.append((name, w, h, boxes))
            if log:
                print(f"{len(records)}/{n} {name} {w}x{h} {len(boxes)} objects {time.time() - t0:.0f}s", flush=True)
            index += 1
    finally:
        make_shapes.MIN_SIDE, make_shapes.MAX_SIDE = saved
    (ann_dir / "instances_val.json").write_text(json.dumps(make_shapes.coco_dict(sorted(records))))
    make_shapes.write_data_yaml(out / "data.yaml", str(out), "images/val", "images/val")
    sides = [max(w, h) for _, w, h, _ in records] + [min(w, h) for _, w, h, _ in records]
    return {"images": len(records), "objects": sum(len(r[3]) for r in records), "min_side": min(sides),
            "max_side": max(sides), "seed": seed, "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n", type=int, default=60, help="number of images (default 60)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--min-side", type=int, default=1280)
    ap.add_argument("--max-side", type=int, default=4000)
    args = ap.parse_args(argv)
    print(json.dumps(generate(args.out, args.n, args.seed, args.min_side, args.max_side, log=True), indent=2))


if __name__ == "__main__":
    main()
