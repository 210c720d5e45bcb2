"""The demo's task rows: the bundled -seg, -pose and -obb shapes models and the RT-DETR detector, one row each, and a
picture grid.

Each model (trained by ``tools/train_task_demos.py`` on the synthetic shapes sets of ``tools/shape_tasks.py``)
predicts its bundled validation split (``assets/demo/val_<task>``) on one backend, writing annotated images
(translucent masks, keypoints with the star's outline as skeleton, rotated boxes); its box mAP and its task's own
mAP (mask, keypoint OKS, rotated-box) come from unideploy's ``eval``, and its speed is end to end. The RT-DETR row
(``shapes_rtdetr.onnx``, trained by ``tools/train_rtdetr_demo.py``) runs on the detector's own validation split and
has box mAP only.

Example:
    >>> from unideploy.apps.demo_tasks import run_task_rows
    >>> rows = run_task_rows("out/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["DATASET_TASK", "METRIC", "TASK_MODELS", "run_task_rows", "task_grid", "task_table", "task_markdown"]

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo"
#: task -> (model file, validation data.yaml), both bundled
TASK_MODELS = {t: (ASSETS / f"shapes_yolov8_{t}.onnx", ASSETS / f"val_{t}" / "data.yaml") for t in ("seg", "pose", "obb")}
TASK_MODELS["rtdetr"] = (ASSETS / "shapes_rtdetr.onnx", ASSETS / "val" / "data.yaml")
METRIC: dict[str, str | None] = {"seg": "mask", "pose": "pose", "obb": "obb", "rtdetr": None}
DATASET_TASK = {"seg": "segment", "rtdetr": "detect"}


def run_task_rows(out: str | Path, backend: str = "onnxruntime", log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Predict, evaluate and time every bundled task model on ``backend``; one dict per task (see module doc)."""
    from unideploy.runtime.load import load
    from unideploy.tools.evaluate import evaluate
    from unideploy.tools.evaluate.datasets import load_dataset
    from unideploy.tools.predict import predict

    out = Path(out)
    rows = []
    for task, (model, data) in TASK_MODELS.items():
        if not model.exists() or not data.exists():
            log(f"[{task}] skipped: {model.name} or {data.parent.name}/ is not bundled")
            continue
        images = [s.path for s in load_dataset(data, task=DATASET_TASK.get(task, task)).samples]
        log(f"[{task}] {model.name} on {backend}: predicting {len(images)} images")
        with load(model, backend=backend, conf=0.25) as pred:
            predict(pred, images, save_img=out / "tasks" / task / "images")
            t0 = time.perf_counter()
            for _ in pred.stream(images):
                pass
            dt = time.perf_counter() - t0
            metrics = evaluate(pred, data)
        own = (metrics.get(METRIC[task]) if METRIC[task] else None) or {}
        rows.append({"task": task, "model": str(model.resolve()), "backend": backend, "images": metrics["images"],
                     "box_map50_95": metrics["mAP50-95"], "box_map50": metrics["mAP50"],
                     "task_metric": own.get("metric", METRIC[task]), "task_map50_95": own.get("mAP50-95"),
                     "task_map50": own.get("mAP50"), "ms_per_image": round(dt / len(images) * 1e3, 2),
                     "images_per_s": round(len(images) / dt, 1), "annotated": str((out / "tasks" / task / "images").resolve())})
    return rows


def task_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'task':<6} {'backend':<12} {'box mAP50-95':>12} {'task mAP50-95':>13} {'task mAP50':>10} {'ms/img':>7} {'img/s':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        tm = "-" if r["task_map50_95"] is None else f"{r['task_map50_95']:.4f}"
        t5 = "-" if r["task_map50"] is None else f"{r['task_map50']:.4f}"
        lines.append(f"{r['task']:<6} {r['backend']:<12} {r['box_map50_95']:>12.4f} {tm:>13} {t5:>10} "
                     f"{r['ms_per_image']:>7.1f} {r['images_per_s']:>6.1f}")
    return "\n".join(lines)


def task_grid(rows: list[dict[str, Any]], path: Path, per_task: int = 3, cell: tuple[int, int] = (240, 320)) -> Path | None:
    """One row of annotated pictures per task (masks, keypoints, rotated boxes)."""
    import cv2

    from unideploy.core.ops.letterbox import letterbox
    from unideploy.core.sinks import write_image

    lines = []
    for r in rows:
        files = sorted(Path(r["annotated"]).glob("*"))[:per_task]
        tiles = [letterbox(cv2.imread(str(f)), cell, pad_value=255)[0] for f in files]
        if not tiles:
            continue
        tiles += [np.full_like(tiles[0], 255)] * (per_task - len(tiles))
        lines.append(np.hstack(tiles))
    if not lines:
        return None
    write_image(path, np.vstack(lines))
    return path


def task_markdown(rows: list[dict[str, Any]], grid: Path | None) -> list[str]:
    """The report.md section of the task rows."""
    if not rows:
        return []
    parts = ["## Segmentation, pose, oriented boxes, RT-DETR", "",
             "The bundled `shapes_yolov8_{seg,pose,obb}` models and the RT-DETR detector `shapes_rtdetr` on their own "
             f"validation splits ({', '.join(str(r['images']) + ' ' + r['task'] for r in rows)} images). Task mAP: "
             + "; ".join(f"{r['task']} = {r['task_metric'] or 'boxes only'}" for r in rows) + ".", "", "```",
             task_table(rows), "```", ""]
    if grid:
        parts += [f"![task predictions]({grid.name})", ""]
    return parts
