#!/usr/bin/env python3
"""Build the bundled demo data set and demo detector of unideploy.

Steps (all on CPU, no downloads):

1. generate the synthetic shapes data set with ``tools/make_shapes.py``
   (full data set into a git-ignored work folder, default ``out/shapes``);
2. train a small Ultralytics YOLOv8 detector from a yaml config (random init);
3. validate it with Ultralytics ``val``;
4. export it to ONNX (static shape, simplified, Ultralytics metadata kept);
5. copy the small assets into ``src/unideploy/assets/demo/``:
   ``shapes_yolov8.onnx``, ``shapes_yolov8.pt``, ``val/`` (images, labels,
   data.yaml, instances_val.json) and ``train_report.json``.

Usage::

    python tools/train_demo.py                 # the configuration used for the bundled assets
    python tools/train_demo.py --epochs 1 --train 64 --no-assets   # quick timing run

Environment: ``YOLO_OFFLINE=1`` and ``YOLO_CONFIG_DIR`` are set by this script
if they are not already set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", "/tmp/yolo_cfg")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_shapes  # noqa: E402

ASSETS = REPO / "src" / "unideploy" / "assets" / "demo"

# YOLOv8 architecture (ultralytics/cfg/models/v8/yolov8.yaml) with explicit
# depth/width multiples so the width can be slimmed below the "n" scale.
MODEL_YAML = """\
# YOLOv8 detector for the unideploy shapes demo (written by tools/train_demo.py)
nc: {nc}
depth_multiple: {depth}
width_multiple: {width}
max_channels: {max_channels}
backbone:
  - [-1, 1, Conv, [64, 3, 2]] # 0-P1/2
  - [-1, 1, Conv, [128, 3, 2]] # 1-P2/4
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]] # 3-P3/8
  - [-1, 6, C2f, [256, True]]
  - [-1, 1, Conv, [512, 3, 2]] # 5-P4/16
  - [-1, 6, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]] # 7-P5/32
  - [-1, 3, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]] # 9
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]] # cat backbone P4
  - [-1, 3, C2f, [512]] # 12
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]] # cat backbone P3
  - [-1, 3, C2f, [256]] # 15 (P3/8-small)
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 12], 1, Concat, [1]] # cat head P4
  - [-1, 3, C2f, [512]] # 18 (P4/16-medium)
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 9], 1, Concat, [1]] # cat head P5
  - [-1, 3, C2f, [1024]] # 21 (P5/32-large)
  - [[15, 18, 21], 1, Detect, [nc]] # Detect(P3, P4, P5)
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Generate the shapes data set, train, validate and export the demo model.")
    ap.add_argument("--work", default=str(REPO / "out" / "shapes_demo"), help="git-ignored work folder")
    ap.add_argument("--assets", default=str(ASSETS), help="where the small assets are copied")
    ap.add_argument("--no-assets", action="store_true", help="do not touch the assets folder (timing runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=2000, help="training images")
    ap.add_argument("--val", type=int, default=150, help="validation images (all are bundled; keep <= 150)")
    ap.add_argument("--skip-gen", action="store_true", help="reuse an existing data set in --work")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=40, help="upper bound; --time-hours re-plans it after each epoch")
    ap.add_argument("--time-hours", type=float, default=0.58,
                    help="Ultralytics 'time' budget for training (0 = off); keeps the whole script < 45 min on 2 CPU cores")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--nbs", type=int, default=16,
                    help="nominal batch size; = batch means one optimizer step per batch (no accumulation)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--depth", type=float, default=0.33)
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--max-channels", type=int, default=1024)
    ap.add_argument("--lr0", type=float, default=0.002)
    ap.add_argument("--close-mosaic", type=int, default=4)
    ap.add_argument("--patience", type=int, default=100)
    return ap.parse_args(argv)


def train_kwargs(a, data_yaml: Path, project: Path) -> dict:
    return dict(
        data=str(data_yaml), epochs=a.epochs, time=a.time_hours or None, imgsz=a.imgsz, batch=a.batch,
        nbs=a.nbs, workers=a.workers,
        device="cpu", amp=False, plots=False, cache="ram", seed=a.seed, deterministic=True,
        project=str(project), name="train", exist_ok=True, verbose=True,
        val=True,  # per-epoch val on the small val split is cheap (~4 s) and picks best.pt
        optimizer="AdamW", lr0=a.lr0, lrf=0.05, cos_lr=True, warmup_epochs=1.0, patience=a.patience,
        close_mosaic=a.close_mosaic, mosaic=1.0, mixup=0.0, degrees=0.0, shear=0.0, perspective=0.0,
        translate=0.1, scale=0.3, fliplr=0.5, flipud=0.0, hsv_h=0.015, hsv_s=0.5, hsv_v=0.3,
    )


def metrics_dict(m, names) -> dict:
    box = m.box
    per_class = {}
    for i, c in enumerate(box.ap_class_index):
        c = int(c)
        per_class[names[c]] = {"mAP50-95": round(float(box.ap[i]), 4), "mAP50": round(float(box.ap50[i]), 4)}
    return {
        "mAP50-95": round(float(box.map), 4), "mAP50": round(float(box.map50), 4),
        "mAP75": round(float(box.map75), 4), "precision": round(float(box.mp), 4),
        "recall": round(float(box.mr), 4), "per_class": per_class,
    }


def _read_results(save_dir: Path) -> list:
    """Per-epoch rows of Ultralytics' results.csv (epoch, time, losses, val metrics)."""
    import csv

    f = save_dir / "results.csv"
    if not f.exists():
        return []
    with f.open() as fh:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def export_val_assets(work: Path, dst: Path, n_val: int):
    """Copy the (whole) validation split into dst/ with a self-contained data.yaml and COCO json."""
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir(parents=True)
    coco = json.loads((work / "annotations" / "instances_val.json").read_text())
    images = sorted(coco["images"], key=lambda r: r["file_name"])[:n_val]
    keep = {im["id"] for im in images}
    for im in images:
        stem = Path(im["file_name"]).stem
        shutil.copy2(work / "images" / "val" / im["file_name"], dst / "images" / im["file_name"])
        shutil.copy2(work / "labels" / "val" / f"{stem}.txt", dst / "labels" / f"{stem}.txt")
    # ids are 1-based positions in sorted order, so the first n_val images keep their ids
    coco["images"] = images
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    (dst / "instances_val.json").write_text(json.dumps(coco))
    make_shapes.write_data_yaml(
        dst / "data.yaml", None, "images", "images",
        comment="No 'path' key: Ultralytics then resolves 'train'/'val' relative to this file's folder.\n"
                "train points at the validation images only because Ultralytics requires the key.")


def main(argv=None):
    a = parse_args(argv)
    t_start = time.time()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(a).copy()}

    # 1. data
    t0 = time.time()
    if a.skip_gen and (work / "data.yaml").exists():
        gen_stats = json.loads((work / "gen_stats.json").read_text()) if (work / "gen_stats.json").exists() else {}
    else:
        gen_stats = make_shapes.generate(work, a.train, a.val, a.seed)
        (work / "gen_stats.json").write_text(json.dumps(gen_stats, indent=2))
    report["data"] = {"generator": f"python tools/make_shapes.py --out {work} --train {a.train} --val {a.val} "
                                   f"--seed {a.seed}", "stats": gen_stats,
                      "wall_time_s": round(time.time() - t0, 1)}
    print(f"data ready in {time.time() - t0:.1f}s: {gen_stats}", flush=True)

    # 2. train
    import torch
    import ultralytics
    from ultralytics import YOLO

    cfg = work / "shapes-yolov8.yaml"
    cfg.write_text(MODEL_YAML.format(nc=len(make_shapes.CLASS_NAMES), depth=a.depth, width=a.width,
                                     max_channels=a.max_channels))
    project = work / "runs"
    kwargs = train_kwargs(a, work / "data.yaml", project)
    model = YOLO(str(cfg), task="detect")
    t0 = time.time()
    model.train(**kwargs)
    train_time = time.time() - t0
    save_dir = Path(model.trainer.save_dir)
    best = save_dir / "weights" / "best.pt"
    if not best.exists():
        best = save_dir / "weights" / "last.pt"
    n_params = sum(p.numel() for p in model.model.parameters())
    report["train"] = {"model_yaml": cfg.read_text(), "params": n_params, "kwargs": kwargs,
                       "wall_time_s": round(train_time, 1), "weights": str(best),
                       "torch_threads": torch.get_num_threads(),
                       "epochs_run": int(model.trainer.epoch) + 1, "results_csv": _read_results(save_dir)}
    print(f"training took {train_time:.1f}s", flush=True)

    # 3. validate (Ultralytics val) on the generated validation split
    t0 = time.time()
    best_model = YOLO(str(best))
    names = best_model.names
    val_kw = dict(imgsz=a.imgsz, batch=a.batch, device="cpu", workers=a.workers, plots=False,
                  project=str(project), name="val", exist_ok=True)
    m = best_model.val(data=str(work / "data.yaml"), split="val", **val_kw)
    report["val"] = {"data": str(work / "data.yaml"), "kwargs": val_kw, **metrics_dict(m, names),
                     "wall_time_s": round(time.time() - t0, 1)}
    print(f"val mAP50-95={report['val']['mAP50-95']} mAP50={report['val']['mAP50']}", flush=True)

    # 4. export to ONNX (static shape, simplified; Ultralytics writes names/imgsz/stride/task metadata)
    t0 = time.time()
    onnx_path = Path(best_model.export(format="onnx", imgsz=a.imgsz, simplify=True, dynamic=False,
                                       half=False, device="cpu"))
    import onnx

    om = onnx.load(str(onnx_path))
    report["export"] = {
        "kwargs": {"format": "onnx", "imgsz": a.imgsz, "simplify": True, "dynamic": False, "half": False},
        "opset": max(o.version for o in om.opset_import if o.domain in ("", "ai.onnx")),
        "input": {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in om.graph.input},
        "output": {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in om.graph.output},
        "metadata": {p.key: p.value for p in om.metadata_props},
        "wall_time_s": round(time.time() - t0, 1),
    }

    # 5. assets
    if not a.no_assets:
        dst = Path(a.assets)
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(onnx_path, dst / "shapes_yolov8.onnx")
        shutil.copy2(best, dst / "shapes_yolov8.pt")
        export_val_assets(work, dst / "val", min(a.val, 150))
        # check that the bundled split is usable on its own and that the ONNX model agrees
        t0 = time.time()
        mb = YOLO(str(dst / "shapes_yolov8.pt")).val(data=str(dst / "val" / "data.yaml"), **val_kw)
        report["val_bundled"] = {"data": "val/data.yaml", **metrics_dict(mb, names),
                                 "wall_time_s": round(time.time() - t0, 1)}
        mo = YOLO(str(dst / "shapes_yolov8.onnx"), task="detect").val(
            data=str(dst / "val" / "data.yaml"), **{**val_kw, "batch": 1})
        report["val_bundled_onnx"] = {"data": "val/data.yaml", **metrics_dict(mo, names)}
        for cache in (dst / "val").glob("*.cache"):
            cache.unlink()  # Ultralytics label cache: keep the assets folder clean

    import cv2
    import numpy
    import onnxruntime

    report["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "ultralytics": ultralytics.__version__, "onnx": onnx.__version__,
                          "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
                          "numpy": numpy.__version__}
    report["machine"] = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                         "device": "cpu"}
    report["total_wall_time_s"] = round(time.time() - t_start, 1)
    out = json.dumps(report, indent=2, default=str)
    (work / "train_report.json").write_text(out)
    if not a.no_assets:
        (Path(a.assets) / "train_report.json").write_text(out)
    print(out)


if __name__ == "__main__":
    main()
