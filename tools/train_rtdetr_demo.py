#!/usr/bin/env python3
"""Train, validate and export the bundled RT-DETR demo detector of unideploy.

Steps (all on CPU, no downloads):

1. reuse (or generate with ``tools/make_shapes.py``) the synthetic shapes data set in a
   git-ignored work folder, default ``out/shapes_demo``; the validation split depends only
   on the seed, so it is the same 150 images the YOLOv8 demo bundles in ``assets/demo/val``;
2. build a slimmed Ultralytics RT-DETR from a yaml config with ``RTDETR(yaml)``: the YOLOv8
   demo's Conv/C2f backbone (same layers 0-9, same widths), a hybrid encoder (one AIFI layer on
   P5 + CCFM with RepC3 blocks) at ``--hidden`` channels and an ``RTDETRDecoder`` with
   ``--queries`` queries and ``--dec-layers`` layers;
3. optionally initialise the backbone from the bundled YOLOv8 demo checkpoint (``--init-backbone``,
   default on: that checkpoint was trained on the training split of the same data set, never on
   the validation split), then train with Ultralytics' ``time=`` budget;
4. validate with Ultralytics ``val``, export to ONNX (static shape, Ultralytics metadata kept);
5. copy ``shapes_rtdetr.onnx``, ``shapes_rtdetr.pt`` and ``rtdetr_train_report.json`` into
   ``src/unideploy/assets/demo/`` and check the bundled val split against the copied files.

Usage::

    python tools/train_rtdetr_demo.py                    # the configuration used for the bundled assets
    python tools/train_rtdetr_demo.py --epochs 1 --train 50 --time-hours 0 --no-assets   # smoke run
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
from train_demo import _read_results, metrics_dict  # noqa: E402

ASSETS = REPO / "src" / "unideploy" / "assets" / "demo"

# Backbone = layers 0-9 of tools/train_demo.py's YOLOv8 (so its trained weights transfer key by
# key); neck/encoder/decoder follow ultralytics/cfg/models/rt-detr/rtdetr-l.yaml with the P3/P4
# taps moved to layers 4/6.  Conv/RepC3 channel arguments are scaled by width_multiple, so the
# yaml holds {hid_yaml} = hidden / width to get ``hidden`` channels in the graph.
MODEL_YAML = """\
# RT-DETR detector for the unideploy shapes demo (written by tools/train_rtdetr_demo.py)
nc: {nc}
depth_multiple: {depth}
width_multiple: {width}
max_channels: {max_channels}
backbone:
  - [-1, 1, Conv, [64, 3, 2]] # 0-P1/2
  - [-1, 1, Conv, [128, 3, 2]] # 1-P2/4
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]] # 3-P3/8
  - [-1, 6, C2f, [256, True]] # 4
  - [-1, 1, Conv, [512, 3, 2]] # 5-P4/16
  - [-1, 6, C2f, [512, True]] # 6
  - [-1, 1, Conv, [1024, 3, 2]] # 7-P5/32
  - [-1, 3, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]] # 9
head:
  - [-1, 1, Conv, [{hid_yaml}, 1, 1, None, 1, 1, False]] # 10 input_proj.2
  - [-1, 1, AIFI, [{ffn}, {heads}]]
  - [-1, 1, Conv, [{hid_yaml}, 1, 1]] # 12, Y5
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [6, 1, Conv, [{hid_yaml}, 1, 1, None, 1, 1, False]] # 14 input_proj.1
  - [[-2, -1], 1, Concat, [1]]
  - [-1, 3, RepC3, [{hid_yaml}]] # 16
  - [-1, 1, Conv, [{hid_yaml}, 1, 1]] # 17, Y4
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [4, 1, Conv, [{hid_yaml}, 1, 1, None, 1, 1, False]] # 19 input_proj.0
  - [[-2, -1], 1, Concat, [1]]
  - [-1, 3, RepC3, [{hid_yaml}]] # 21 X3
  - [-1, 1, Conv, [{hid_yaml}, 3, 2]]
  - [[-1, 17], 1, Concat, [1]]
  - [-1, 3, RepC3, [{hid_yaml}]] # 24 F4
  - [-1, 1, Conv, [{hid_yaml}, 3, 2]]
  - [[-1, 12], 1, Concat, [1]]
  - [-1, 3, RepC3, [{hid_yaml}]] # 27 F5
  - [[21, 24, 27], 1, RTDETRDecoder, [nc, {hidden}, {queries}, 4, {heads}, {dec_layers}, {ffn}]]
"""

BACKBONE_LAYERS = 10  # model.0 .. model.9 are shared with the YOLOv8 demo


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Train, validate and export the RT-DETR demo model.")
    ap.add_argument("--work", default=str(REPO / "out" / "shapes_demo"), help="git-ignored work folder")
    ap.add_argument("--assets", default=str(ASSETS), help="where the small assets are copied")
    ap.add_argument("--no-assets", action="store_true", help="do not touch the assets folder (timing runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=1500, help="training images (generated when the work folder has none)")
    ap.add_argument("--val", type=int, default=150)
    ap.add_argument("--subset", type=int, default=0, help="train on the first N training images only (smoke runs)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=60, help="upper bound; --time-hours re-plans it after each epoch")
    ap.add_argument("--time-hours", type=float, default=0.7,
                    help="Ultralytics 'time' budget for training (0 = off); keeps the script < 50 min on 2 CPU cores")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--depth", type=float, default=0.33)
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--max-channels", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=64, help="hybrid encoder and decoder hidden dim")
    ap.add_argument("--ffn", type=int, default=256, help="AIFI and decoder feed-forward dim")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--dec-layers", type=int, default=3)
    ap.add_argument("--init-backbone", default=str(ASSETS / "shapes_yolov8.pt"),
                    help="checkpoint whose layers 0-9 initialise the backbone ('' = random init)")
    ap.add_argument("--lr0", type=float, default=0.0008)
    ap.add_argument("--close-mosaic", type=int, default=2)
    ap.add_argument("--mosaic", type=float, default=0.5)
    return ap.parse_args(argv)


def train_kwargs(a, data_yaml: Path, project: Path) -> dict:
    return dict(
        data=str(data_yaml), epochs=a.epochs, time=a.time_hours or None, imgsz=a.imgsz, batch=a.batch,
        nbs=a.batch, workers=a.workers, device="cpu", amp=False, plots=False, cache="ram", seed=a.seed,
        deterministic=True, project=str(project), name="train_rtdetr", exist_ok=True, verbose=True, val=True,
        optimizer="AdamW", lr0=a.lr0, lrf=0.05, cos_lr=True, warmup_epochs=1.0, weight_decay=0.0001,
        patience=100, close_mosaic=a.close_mosaic, mosaic=a.mosaic, mixup=0.0, degrees=0.0, shear=0.0,
        perspective=0.0, translate=0.1, scale=0.3, fliplr=0.5, flipud=0.0, hsv_h=0.015, hsv_s=0.5, hsv_v=0.3,
    )


def _data(a, work: Path) -> tuple[Path, dict]:
    """The data.yaml to train on (a --subset copy for smoke runs) and the generator stats."""
    if not (work / "data.yaml").exists():
        stats = make_shapes.generate(work, a.train, a.val, a.seed)
        (work / "gen_stats.json").write_text(json.dumps(stats, indent=2))
    stats_file = work / "gen_stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {
        s: {"images": len(list((work / "images" / s).glob("*.jpg")))} for s in ("train", "val")}
    if not a.subset:
        return work / "data.yaml", stats
    sub = work / f"subset_{a.subset}.txt"
    files = sorted((work / "images" / "train").glob("*.jpg"))[: a.subset]
    sub.write_text("".join(f"{f}\n" for f in files))
    y = work / f"data_subset_{a.subset}.yaml"
    make_shapes.write_data_yaml(y, str(work), sub.name, "images/val")
    return y, stats


def _init_backbone(model, ckpt: str) -> dict:
    """Copy layers 0-9 of a YOLOv8 checkpoint into ``model`` (shapes must match); returns a summary."""
    import torch

    src = torch.load(ckpt, map_location="cpu", weights_only=False)
    src = (src.get("ema") or src["model"]).float().state_dict()
    dst = model.model.state_dict()
    keep = {k: v for k, v in src.items()
            if int(k.split(".")[1]) < BACKBONE_LAYERS and k in dst and dst[k].shape == v.shape}
    n_bb = sum(1 for k in dst if int(k.split(".")[1]) < BACKBONE_LAYERS)
    if len(keep) != n_bb:
        raise SystemExit(f"--init-backbone {ckpt}: {len(keep)} of {n_bb} backbone tensors match; "
                         "use the same --depth/--width as tools/train_demo.py or --init-backbone ''")
    model.model.load_state_dict(keep, strict=False)
    return {"checkpoint": ckpt, "tensors": len(keep), "params": int(sum(v.numel() for v in keep.values()))}


def main(argv=None):
    a = parse_args(argv)
    t_start = time.time()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(a).copy()}
    t0 = time.time()
    data_yaml, gen_stats = _data(a, work)
    report["data"] = {"generator": f"python tools/make_shapes.py --out {work} --train {a.train} --val {a.val} "
                                   f"--seed {a.seed}", "data_yaml": str(data_yaml), "stats": gen_stats,
                      "wall_time_s": round(time.time() - t0, 1)}

    import torch
    import ultralytics
    from ultralytics import RTDETR

    cfg = work / "shapes-rtdetr.yaml"
    cfg.write_text(MODEL_YAML.format(
        nc=len(make_shapes.CLASS_NAMES), depth=a.depth, width=a.width, max_channels=a.max_channels,
        hid_yaml=int(round(a.hidden / a.width)), hidden=a.hidden, ffn=a.ffn, heads=a.heads,
        queries=a.queries, dec_layers=a.dec_layers))
    project = work / "runs"
    model = RTDETR(str(cfg))
    init = None
    if a.init_backbone:
        init = _init_backbone(model, a.init_backbone)
        init_ckpt = work / "rtdetr_init.pt"
        torch.save({"model": model.model, "train_args": {}}, init_ckpt)
        model = RTDETR(str(cfg)).load(str(init_ckpt))  # the trainer rebuilds from cfg + these weights
    kwargs = train_kwargs(a, data_yaml, project)
    t0 = time.time()
    model.train(**kwargs)
    train_time = time.time() - t0
    save_dir = Path(model.trainer.save_dir)
    best = save_dir / "weights" / "best.pt"
    if not best.exists():
        best = save_dir / "weights" / "last.pt"
    report["train"] = {"model_yaml": cfg.read_text(), "params": sum(p.numel() for p in model.model.parameters()),
                       "backbone_init": init, "kwargs": kwargs, "wall_time_s": round(train_time, 1),
                       "weights": str(best), "torch_threads": torch.get_num_threads(),
                       "epochs_run": int(model.trainer.epoch) + 1, "results_csv": _read_results(save_dir)}
    print(f"training took {train_time:.1f}s", flush=True)

    t0 = time.time()
    best_model = RTDETR(str(best))
    names = best_model.names
    val_kw = dict(imgsz=a.imgsz, batch=a.batch, device="cpu", workers=a.workers, plots=False,
                  project=str(project), name="val_rtdetr", exist_ok=True)
    m = best_model.val(data=str(work / "data.yaml"), split="val", **val_kw)
    report["val"] = {"data": str(work / "data.yaml"), "kwargs": val_kw, **metrics_dict(m, names),
                     "wall_time_s": round(time.time() - t0, 1)}
    print(f"val mAP50-95={report['val']['mAP50-95']} mAP50={report['val']['mAP50']}", flush=True)

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
        "metadata": {p.key: p.value for p in om.metadata_props}, "bytes": onnx_path.stat().st_size,
        "wall_time_s": round(time.time() - t0, 1),
    }
    if not a.no_assets:
        dst = Path(a.assets)
        bundled = dst / "val" / "data.yaml"
        if not bundled.exists():
            raise SystemExit(f"{bundled} not found: run tools/train_demo.py first (it bundles the val split)")
        shutil.copy2(onnx_path, dst / "shapes_rtdetr.onnx")
        shutil.copy2(best, dst / "shapes_rtdetr.pt")
        t0 = time.time()
        mb = RTDETR(str(dst / "shapes_rtdetr.pt")).val(data=str(bundled), **val_kw)
        report["val_bundled"] = {"data": "val/data.yaml", **metrics_dict(mb, names),
                                 "wall_time_s": round(time.time() - t0, 1)}
        mo = RTDETR(str(dst / "shapes_rtdetr.onnx")).val(data=str(bundled), **{**val_kw, "batch": 1})
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
    (work / "rtdetr_train_report.json").write_text(out)
    if not a.no_assets:
        (Path(a.assets) / "rtdetr_train_report.json").write_text(out)
    print(out)


if __name__ == "__main__":
    main()
