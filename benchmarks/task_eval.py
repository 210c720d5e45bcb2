"""``unideploy eval`` vs Ultralytics ``val`` on the bundled task demo models (seg, pose, OBB) and their val sets.

For each task, on the same ONNX file and the same 40 labelled images (160 px, conf 0.001, iou 0.7, batch 1):

* unideploy with single-label NMS (as ``predict``; the default) and with ``multi_label=True`` (as Ultralytics'
  validators), scored by the default evaluator (pycocotools for box / mask / keypoints, Ultralytics' OBB metric);
* for seg and pose also ``metric="ultralytics"`` (images resized, and boxes and masks / keypoints scored, as
  Ultralytics' validators do), single- and multi-label;
* unideploy single-label on the set's COCO JSON (``instances_val.json``) instead of its data.yaml;
* Ultralytics ``YOLO(onnx).val(...)``, and again with its NMS forced to ``multi_label=False`` (to attribute the
  difference to the NMS).

Writes ``benchmarks/results/task_eval.json``: [mAP50-95, mAP50] per row, the gaps to Ultralytics in points, seconds
and the machine load.

Usage: python benchmarks/task_eval.py [--tasks seg,pose,obb] [--out benchmarks/results/task_eval.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

TASKS = {"seg": ("segment", "mask"), "pose": ("pose", "pose"), "obb": ("obb", "obb")}


def _pair(m: dict) -> list[float]:
    return [round(float(m["mAP50-95"]), 4), round(float(m["mAP50"]), 4)]


@contextlib.contextmanager
def _single_label_nms(active: bool):
    """Ultralytics' validators with their NMS call forced to ``multi_label=False`` while active."""
    from ultralytics.utils import nms

    original = nms.non_max_suppression
    if active:
        nms.non_max_suppression = lambda *a, **kw: original(*a, **{**kw, "multi_label": False})
    try:
        yield
    finally:
        nms.non_max_suppression = original


def run_task(t: str, work: Path) -> dict:
    from ultralytics import YOLO

    from unideploy.apps.demo import ASSETS
    from unideploy.tools.evaluate import evaluate

    task, key = TASKS[t]
    model = ASSETS / f"shapes_yolov8_{t}.onnx"
    data = work / f"val_{t}"
    shutil.copytree(ASSETS / f"val_{t}", data)  # Ultralytics writes labels.cache beside the labels
    yaml = data / "data.yaml"
    rows: dict = {}
    seconds: dict = {}
    variants = [("single_label", False, "pycocotools"), ("multi_label", True, "pycocotools")]
    if t in ("seg", "pose"):
        variants += [("single_label_ultralytics_metric", False, "ultralytics"),
                     ("multi_label_ultralytics_metric", True, "ultralytics")]
    for name, multi, metric in variants:
        t0 = time.perf_counter()
        r = evaluate(model, yaml, multi_label=multi, metric=metric)
        seconds[name] = round(time.perf_counter() - t0, 1)
        rows[name] = {"box": _pair(r), key: _pair(r[key])}
    if (data / "instances_val.json").is_file():
        r = evaluate(model, data / "instances_val.json", images=data / "images")
        rows["single_label_coco_json"] = {"box": _pair(r), key: _pair(r[key])}
    for name, force_single in (("ultralytics_val", False), ("ultralytics_val_single_label_nms", True)):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), _single_label_nms(force_single):
            ref = YOLO(str(model), task=task).val(data=str(yaml), imgsz=160, batch=1, conf=0.001, iou=0.7,
                                                  plots=False, verbose=False, project=str(work / "runs"),
                                                  name=f"{t}_{name}")
        seconds[name] = round(time.perf_counter() - t0, 1)
        own = getattr(ref, {"segment": "seg", "pose": "pose", "obb": "box"}[task])
        rows[name] = {"box": [round(ref.box.map, 4), round(ref.box.map50, 4)],
                      key: [round(own.map, 4), round(own.map50, 4)]}
    u = rows["ultralytics_val"]
    gaps = {name: {k: [round(100 * (v[i] - u[k][i]), 2) for i in range(2)] for k, v in row.items()}
            for name, row in rows.items() if not name.startswith("ultralytics_val")}
    return {"imgsz": 160, "images": 40, **rows, "gap_points_vs_ultralytics": gaps, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="seg,pose,obb")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "task_eval.json"))
    args = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("YOLO_CONFIG_DIR", tmp)
        for t in args.tasks.split(","):
            out[t] = run_task(t, Path(tmp))
            print(t, json.dumps(out[t]), flush=True)
    import ultralytics

    out["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out["what"] = (f"bundled trained task demo models (assets/demo/shapes_yolov8_{{seg,pose,obb}}.onnx, 160 px) on "
                   f"their bundled 40-image val sets (data.yaml): unideploy eval, single-label NMS (as predict, the "
                   f"default) and multi_label=True (as Ultralytics' validators), scored by pycocotools (OBB: "
                   f"Ultralytics' OBB metric) and, for seg and pose, also metric='ultralytics' (its validators' "
                   f"resize and arithmetic), vs Ultralytics {ultralytics.__version__} val on the same ONNX (conf 0.001, "
                   f"iou 0.7, batch 1), also with its NMS forced single-label; [mAP50-95, mAP50]; gaps in points (unideploy - "
                   f"Ultralytics val)")
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
