#!/usr/bin/env python3
"""Train the small crop classifier of ``examples/detect_then_classify.yaml`` (CPU, no downloads).

1. Cut crops around the labelled shapes of the synthetic demo data set (``tools/make_shapes.py``, same seed and
   splits as the demo detector), with the pipeline's own ``crop`` op and its settings (pad 0.1, square), plus
   one jittered crop per object so the classifier tolerates a detector's imprecise boxes;
2. train an Ultralytics YOLOv8 classifier (slim, random init) on them;
3. export it to ONNX (``examples/shapes_crop_cls.onnx``) and score it with unideploy on the val crops;
4. write ``examples/shapes_crop_cls_train_report.json`` (data, settings, Ultralytics and unideploy top-1 of the
   exported file, timings). (Not ``shapes_crop_cls.json``: that name would be read as the model's sidecar spec.)

Usage::

    python examples/train_crop_classifier.py                       # the bundled model
    python examples/train_crop_classifier.py --train 100 --epochs 1 --out /tmp/cls --dest /tmp/cls/c.onnx  # quick
    python examples/train_crop_classifier.py --score-only      # re-score the exported model on the val crops
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_cfg_"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tools"))

import make_shapes  # noqa: E402

from unideploy.apps.graphs import Crop  # noqa: E402
from unideploy.core.results import Detections  # noqa: E402

MODEL_YAML = """\
# YOLOv8 classifier for the shapes crops (written by examples/train_crop_classifier.py)
nc: {nc}
depth_multiple: 0.33
width_multiple: {width}
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 6, C2f, [256, True]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 6, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 3, C2f, [1024, True]]
head:
  - [-1, 1, Classify, [nc]]
"""


def cut_crops(out: Path, split: str, n: int, seed: int, crop: Crop, jitter: float, rng: np.random.Generator) -> int:
    """Write crops of ``n`` generated images of ``split`` into out/<split>/<class>/; returns the crop count."""
    names = make_shapes.CLASS_NAMES
    for name in names:
        (out / split / name).mkdir(parents=True, exist_ok=True)
    count = 0
    for i in range(n):
        img, boxes, _ = make_shapes.make_image(seed, split, i)
        if not boxes:
            continue
        cls = np.array([b[0] for b in boxes])
        xyxy = np.array([b[1:] for b in boxes], np.float32)
        variants = [xyxy]
        if jitter:
            wh = np.concatenate([xyxy[:, 2:] - xyxy[:, :2]] * 2, 1)
            variants.append(xyxy + rng.uniform(-jitter, jitter, xyxy.shape).astype(np.float32) * wh)
        for v, boxes_v in enumerate(variants):
            det = Detections(boxes_v, np.ones(len(cls)), cls, dict(enumerate(names)), img.shape[:2])
            crops = crop.run(img, det)
            for patch, k in zip(crops.images, crops.det_index):
                cv2.imwrite(
                    str(out / split / names[cls[k]] / f"{i:05d}_{k:02d}_{v}.jpg"), patch, [cv2.IMWRITE_JPEG_QUALITY, 95]
                )
                count += 1
    return count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "out" / "shapes_crops"), help="work folder (crops, runs)")
    ap.add_argument("--dest", default=str(HERE / "shapes_crop_cls.onnx"), help="exported model")
    ap.add_argument("--seed", type=int, default=0, help="make_shapes seed (0 = the demo data set)")
    ap.add_argument("--train", type=int, default=600, help="generated train images to cut crops from")
    ap.add_argument("--val", type=int, default=150, help="generated val images (the demo val split)")
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--jitter", type=float, default=0.08, help="box jitter (fraction of w/h) of the extra crop")
    ap.add_argument("--score-only", action="store_true", help="skip cutting and training; score --dest")
    a = ap.parse_args()

    import torch
    from ultralytics import YOLO

    t0 = time.time()
    work = Path(a.out).resolve()
    dest = Path(a.dest)
    crop = Crop("crops", pad=0.1, square=True, min_size=4)  # as in detect_then_classify.yaml
    rng = np.random.default_rng(a.seed)
    if a.score_only:
        n_train = sum(1 for _ in (work / "data" / "train").rglob("*.jpg"))
        n_val = cut_crops(work / "data", "val", a.val, a.seed, crop, 0.0, rng)
        return score(a, work, dest, n_train, n_val, None)
    shutil.rmtree(work / "data", ignore_errors=True)
    n_train = cut_crops(work / "data", "train", a.train, a.seed, crop, a.jitter, rng)
    n_val = cut_crops(work / "data", "val", a.val, a.seed, crop, 0.0, rng)
    t_data = time.time() - t0
    print(f"crops: {n_train} train, {n_val} val ({t_data:.0f} s)")

    torch.manual_seed(a.seed)
    cfg = work / "shapes-cls.yaml"
    cfg.write_text(MODEL_YAML.format(nc=len(make_shapes.CLASS_NAMES), width=a.width))
    model = YOLO(str(cfg), task="classify")
    t1 = time.time()
    model.train(
        data=str(work / "data"),
        imgsz=a.imgsz,
        epochs=a.epochs,
        batch=a.batch,
        workers=2,
        device="cpu",
        project=str(work / "runs"),
        name="train",
        exist_ok=True,
        seed=a.seed,
        deterministic=True,
        optimizer="AdamW",
        lr0=0.003,
        cos_lr=True,
        warmup_epochs=0.5,
        erasing=0.0,
        fliplr=0.5,
        plots=False,
        verbose=False,
        amp=False,
    )
    t_train = time.time() - t1
    metrics = model.val(data=str(work / "data"), imgsz=a.imgsz, batch=a.batch, device="cpu", plots=False, verbose=False)
    onnx_path = Path(model.export(format="onnx", imgsz=a.imgsz, simplify=True, verbose=False))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, dest)
    return score(a, work, dest, n_train, n_val, {"seconds": round(t_train, 1), "pytorch_val_top1": float(metrics.top1)})


def score(a: argparse.Namespace, work: Path, dest: Path, n_train: int, n_val: int, trained: dict | None) -> int:
    """Top-1 of the exported file on the val crops, by Ultralytics and by unideploy; writes the report."""
    import torch
    from ultralytics import YOLO

    import unideploy

    ref = YOLO(str(dest), task="classify").val(
        data=str(work / "data"), imgsz=a.imgsz, batch=1, device="cpu", plots=False, verbose=False
    )

    hits, per_class = [], {}
    with unideploy.load(dest) as clf:
        for d in sorted((work / "data" / "val").iterdir()):
            for f in sorted(d.iterdir()):
                ok = clf(f).class_names[0] == d.name
                hits.append(ok)
                per_class.setdefault(d.name, []).append(ok)
    report = {
        "model": dest.name,
        "bytes": dest.stat().st_size,
        "data": {
            "generator": f"tools/make_shapes.py make_image(seed={a.seed}) train 0..{a.train - 1}, val 0..{a.val - 1}",
            "train_crops": n_train,
            "val_crops": n_val,
            "crop": {"pad": 0.1, "square": True, "min_size": 4},
            "jitter": a.jitter,
        },
        "train": {"imgsz": a.imgsz, "epochs": a.epochs, "batch": a.batch, "width_multiple": a.width, **(trained or {})},
        "ultralytics_onnx_val_top1": float(ref.top1),
        "unideploy_onnx_top1": float(np.mean(hits)),
        "unideploy_onnx_per_class_top1": {k: float(np.mean(v)) for k, v in per_class.items()},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
    }
    dest.with_name(dest.stem + "_train_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
