#!/usr/bin/env python3
"""Train, validate and export the bundled -seg, -pose and -obb demo models of unideploy.

Per task (all on CPU, no downloads):

1. generate the task's synthetic data set with ``tools/shape_tasks.py`` in a git-ignored work folder
   (default ``out/shapes_<task>``);
2. build the YOLOv8 demo architecture of ``tools/train_demo.py`` with the task's head (``Segment``,
   ``Pose`` with ``kpt_shape`` 5x3, ``OBB``) and copy every tensor of the bundled detector checkpoint
   whose name and shape match (backbone, neck and the box branch of the head; that checkpoint was
   trained on the detection training split, never on any validation split);
3. train with Ultralytics' ``time=`` budget, validate with Ultralytics ``val``;
4. export to ONNX (static shape, simplified, Ultralytics metadata kept);
5. copy ``shapes_yolov8_<task>.onnx``, ``shapes_yolov8_<task>.pt``, ``<task>_train_report.json`` and
   the first ``--bundle`` validation images (``val_<task>/``) into ``src/unideploy/assets/demo/``, and
   validate the copied ``.pt`` and ``.onnx`` on that bundled split.

Usage::

    python tools/train_task_demos.py --task segment          # the configuration used for the bundled assets
    python tools/train_task_demos.py --task pose --train 32 --val 8 --time-hours 0 --epochs 1 --no-assets
"""

from __future__ import annotations

import argparse
import hashlib
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

import shape_tasks  # noqa: E402
from train_demo import MODEL_YAML, _read_results  # noqa: E402

ASSETS = REPO / "src" / "unideploy" / "assets" / "demo"
HEADS = {"segment": "Segment, [nc, 32, 256]", "pose": "Pose, [nc, kpt_shape]", "obb": "OBB, [nc, 1]"}
SHORT = {"segment": "seg", "pose": "pose", "obb": "obb"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Train, validate and export a -seg/-pose/-obb demo model.")
    ap.add_argument("--task", required=True, choices=shape_tasks.TASKS)
    ap.add_argument("--work", default="", help="git-ignored work folder (default out/shapes_<task>)")
    ap.add_argument("--assets", default=str(ASSETS))
    ap.add_argument("--no-assets", action="store_true", help="do not touch the assets folder (timing runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--bundle", type=int, default=40, help="validation images copied into the package")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--freeze", type=int, default=10, help="layers kept frozen (the detector's backbone: 10)")
    ap.add_argument("--epochs", type=int, default=30, help="upper bound; --time-hours re-plans it")
    ap.add_argument("--time-hours", type=float, default=0.19, help="Ultralytics 'time' budget (0 = off)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lr0", type=float, default=0.002)
    ap.add_argument("--init", default=str(ASSETS / "shapes_yolov8.pt"),
                    help="checkpoint whose matching tensors initialise the model ('' = random init)")
    return ap.parse_args(argv)


def train_kwargs(a, data_yaml: Path, project: Path) -> dict:
    return dict(
        data=str(data_yaml), epochs=a.epochs, time=a.time_hours or None, imgsz=a.imgsz, batch=a.batch,
        nbs=a.batch, workers=a.workers, device="cpu", amp=False, plots=False, cache="ram", seed=a.seed,
        deterministic=True, project=str(project), name="train", exist_ok=True, verbose=True, val=True,
        optimizer="AdamW", lr0=a.lr0, lrf=0.05, cos_lr=True, warmup_epochs=0.5, patience=100,
        close_mosaic=2, mosaic=1.0, freeze=a.freeze or None, mixup=0.0, degrees=0.0, shear=0.0, perspective=0.0,
        translate=0.1, scale=0.3, fliplr=0.5, flipud=0.0, hsv_h=0.015, hsv_s=0.5, hsv_v=0.3,
    )


def metrics(m, task: str) -> dict:
    """Box mAP plus the task's own (mask / keypoint) mAP from an Ultralytics validator result."""
    out = {"box": {"mAP50-95": round(float(m.box.map), 4), "mAP50": round(float(m.box.map50), 4)}}
    if task == "segment":
        out["mask"] = {"mAP50-95": round(float(m.seg.map), 4), "mAP50": round(float(m.seg.map50), 4)}
    if task == "pose":
        out["pose"] = {"mAP50-95": round(float(m.pose.map), 4), "mAP50": round(float(m.pose.map50), 4)}
    return out


def prepare_data(work: Path, task: str, n_train: int, n_val: int, seed: int) -> dict:
    """Generate the data set into ``work``, or reuse one a previous run generated with the same arguments."""
    key = {"task": task, "train": n_train, "val": n_val, "seed": seed,
           "generator": hashlib.sha256(b"".join((REPO / "tools" / f).read_bytes()
                                                for f in ("make_shapes.py", "shape_tasks.py"))).hexdigest()}
    done = work / "gen_stats.json"
    if done.exists() and (work / "data.yaml").exists():
        prev = json.loads(done.read_text())
        if prev.get("key") == key:
            return prev["stats"]
    stats = shape_tasks.generate(work, task, n_train, n_val, seed)
    done.write_text(json.dumps({"key": key, "stats": stats}, indent=2))
    return stats


def export_val(work: Path, dst: Path, task: str, n: int) -> None:
    """Copy the first ``n`` validation images with labels, COCO JSON and a self-contained data.yaml."""
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir(parents=True)
    coco = json.loads((work / "annotations" / "instances_val.json").read_text())
    images = sorted(coco["images"], key=lambda r: r["file_name"])[:n]
    keep = {im["id"] for im in images}
    for im in images:
        stem = Path(im["file_name"]).stem
        shutil.copy2(work / "images" / "val" / im["file_name"], dst / "images" / im["file_name"])
        shutil.copy2(work / "labels" / "val" / f"{stem}.txt", dst / "labels" / f"{stem}.txt")
    coco["images"] = images
    coco["annotations"] = [x for x in coco["annotations"] if x["image_id"] in keep]
    (dst / "instances_val.json").write_text(json.dumps(coco))
    shape_tasks.write_data_yaml(dst / "data.yaml", task, None, "images", "images",
                                comment="No 'path' key: Ultralytics resolves train/val relative to this file.")


def main(argv=None):
    a = parse_args(argv)
    t_start = time.time()
    work = Path(a.work or REPO / "out" / f"shapes_{a.task}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(a).copy()}
    t0 = time.time()
    stats = prepare_data(work, a.task, a.train, a.val, a.seed)
    report["data"] = {"generator": f"python tools/shape_tasks.py --task {a.task} --out {work} --train {a.train} "
                                   f"--val {a.val} --seed {a.seed}", "stats": stats,
                      "wall_time_s": round(time.time() - t0, 1)}
    print(f"data ready in {time.time() - t0:.1f}s: {stats}", flush=True)

    import torch
    import ultralytics
    from ultralytics import YOLO

    cfg = work / f"shapes-yolov8-{SHORT[a.task]}.yaml"
    text = MODEL_YAML.format(nc=len(shape_tasks.names_for(a.task)), depth=0.33, width=0.125, max_channels=1024)
    text = text.replace("Detect, [nc]] # Detect(P3, P4, P5)", f"{HEADS[a.task]}]")
    if a.task == "pose":
        text = text.replace("nc: 1\n", f"nc: 1\nkpt_shape: {list(shape_tasks.KPT_SHAPE)}\n")
    cfg.write_text(text)
    model = YOLO(str(cfg), task=a.task)
    init = None
    if a.init:
        import torch as _t

        src = _t.load(a.init, map_location="cpu", weights_only=False)
        sd = (src.get("ema") or src["model"]).float().state_dict()
        dst = model.model.state_dict()
        keep = {k: v for k, v in sd.items() if k in dst and dst[k].shape == v.shape}
        model.model.load_state_dict(keep, strict=False)
        init_ckpt = work / "init.pt"
        _t.save({"model": model.model, "train_args": {}}, init_ckpt)
        init = {"checkpoint": a.init, "tensors": len(keep), "of": len(dst),
                "params": int(sum(v.numel() for v in keep.values()))}
        model = YOLO(str(cfg), task=a.task).load(str(init_ckpt))
    project = work / "runs"
    kwargs = train_kwargs(a, work / "data.yaml", project)
    t0 = time.time()
    model.train(**kwargs)
    train_time = time.time() - t0
    save_dir = Path(model.trainer.save_dir)
    best = save_dir / "weights" / "best.pt"
    if not best.exists():
        best = save_dir / "weights" / "last.pt"
    report["train"] = {"model_yaml": text, "params": sum(p.numel() for p in model.model.parameters()),
                       "init": init, "kwargs": kwargs, "wall_time_s": round(train_time, 1),
                       "torch_threads": torch.get_num_threads(), "epochs_run": int(model.trainer.epoch) + 1,
                       "results_csv": _read_results(save_dir)}
    print(f"training took {train_time:.1f}s", flush=True)

    val_kw = dict(imgsz=a.imgsz, batch=a.batch, device="cpu", workers=a.workers, plots=False,
                  project=str(project), name="val", exist_ok=True)
    best_model = YOLO(str(best))
    t0 = time.time()
    report["val"] = {"images": a.val, **metrics(best_model.val(data=str(work / "data.yaml"), **val_kw), a.task),
                     "wall_time_s": round(time.time() - t0, 1)}
    print(f"val {report['val']}", flush=True)

    onnx_path = Path(best_model.export(format="onnx", imgsz=a.imgsz, simplify=True, dynamic=False, half=False,
                                       device="cpu"))
    import onnx

    om = onnx.load(str(onnx_path))
    report["export"] = {
        "opset": max(o.version for o in om.opset_import if o.domain in ("", "ai.onnx")),
        "input": {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in om.graph.input},
        "output": {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in om.graph.output},
        "metadata": {p.key: p.value for p in om.metadata_props},
    }
    name = f"shapes_yolov8_{SHORT[a.task]}"
    if not a.no_assets:
        dst = Path(a.assets)
        shutil.copy2(onnx_path, dst / f"{name}.onnx")
        shutil.copy2(best, dst / f"{name}.pt")
        export_val(work, dst / f"val_{SHORT[a.task]}", a.task, a.bundle)
        data = str(dst / f"val_{SHORT[a.task]}" / "data.yaml")
        report["val_bundled"] = {"images": a.bundle, **metrics(YOLO(str(dst / f"{name}.pt")).val(data=data, **val_kw),
                                                               a.task)}
        report["val_bundled_onnx"] = metrics(
            YOLO(str(dst / f"{name}.onnx"), task=a.task).val(data=data, **{**val_kw, "batch": 1}), a.task)
        for cache in (dst / f"val_{SHORT[a.task]}").glob("*.cache"):
            cache.unlink()
    import cv2
    import numpy
    import onnxruntime

    report["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "ultralytics": ultralytics.__version__, "onnx": onnx.__version__,
                          "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
                          "numpy": numpy.__version__}
    report["machine"] = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    report["total_wall_time_s"] = round(time.time() - t_start, 1)
    out = json.dumps(report, indent=2, default=str)
    (work / "train_report.json").write_text(out)
    if not a.no_assets:
        (Path(a.assets) / f"{SHORT[a.task]}_train_report.json").write_text(out)
    print(out)


if __name__ == "__main__":
    main()
