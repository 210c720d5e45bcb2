"""``unideploy demo``: the bundled shapes detector on every installed backend — predictions, mAP, speed, report.

The demo model (a YOLOv8n trained on the project's synthetic shapes data set, see tools/DEMO.md) and its
validation split ship inside the package, so the demo needs no download. For each backend variant it
predicts the validation images (annotated copies written), evaluates mAP, measures images/s, and writes
a table (stdout), ``report.json`` (every path in it absolute), ``report.md`` with a bar chart and a grid of annotated images. Where NNCF
is installed (``unideploy[quantize]``) the OpenVINO IR is also quantized to INT8 (post-training, calibrated
on the validation images: the demo ships no other split) and run as one more row, and the INT8 model's
detections are compared box by box with the FP32 model's (``unideploy compare``, task level).

Example:
    >>> from unideploy.apps.demo import run_demo
    >>> report = run_demo("out/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from unideploy.core.errors import SourceError
from unideploy.core.precision import PRECISIONS, precision_label

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo"  # src/unideploy/assets/demo
DEMO_MODEL = ASSETS / "shapes_yolov8.onnx"
DEMO_DATA = ASSETS / "val" / "data.yaml"


@dataclass
class Variant:
    """One way of running the demo model: a backend, a device, a model file and its precision."""

    backend: str
    device: str
    model: Path
    precision: str = "fp32"
    note: str = ""


@dataclass
class Row:
    backend: str
    device: str
    precision: str
    model: str
    size_mb: float
    map50_95: float
    map50: float
    ms_per_image: float
    images_per_s: float
    images: int
    extra: dict[str, Any] = field(default_factory=dict)


def demo_variants(model: Path, out: Path, backends: list[str] | None, log: Callable[[str], None],
                  calib: list[Path] | None = None) -> list[Variant]:
    """Every variant this machine can run: ONNX Runtime on the ONNX file, OpenVINO on an IR converted once,
    and that IR quantized to INT8 with ``calib`` images when NNCF is installed."""
    from unideploy.runtime.backends.registry import get_backend

    wanted = backends or ["onnxruntime", "openvino"]
    variants: list[Variant] = []
    for name in wanted:
        b = get_backend(name)
        if not b.available():
            log(f"skipping {name}: not installed (pip install 'unideploy[{b.extra}]')")
            continue
        if name == "openvino" and model.suffix == ".onnx":
            ir = _openvino_ir(model, out / "models", log)
            variants.append(Variant(name, "CPU", ir))
            if calib and ir.suffix == ".xml":
                int8 = _int8_ir(ir, calib, out / "models", log)
                if int8 is not None:
                    variants.append(Variant(name, "CPU", int8, "int8", f"NNCF PTQ, {len(calib)} calibration images"))
        else:
            variants.append(Variant(name, b.default_device, model))
    return variants


def _openvino_ir(onnx_path: Path, models_dir: Path, log: Callable[[str], None]) -> Path:
    xml = models_dir / f"{onnx_path.stem}_openvino_model" / f"{onnx_path.stem}.xml"
    if xml.exists() and xml.stat().st_mtime >= onnx_path.stat().st_mtime:
        return xml
    if importlib.util.find_spec("onnx") is None:  # the converter needs onnx; OpenVINO also reads ONNX directly
        log("onnx not installed: OpenVINO runs the ONNX file directly (pip install 'unideploy[export]' to convert)")
        return onnx_path
    from unideploy.tools.convert import export

    log(f"converting {onnx_path.name} to OpenVINO IR")
    return Path(export(onnx_path, to="openvino", out=xml.parent))


def _int8_ir(ir: Path, calib: list[Path], models_dir: Path, log: Callable[[str], None]) -> Path | None:
    if importlib.util.find_spec("nncf") is None:
        log("nncf not installed: no INT8 variant (pip install 'unideploy[quantize]')")
        return None
    dest = models_dir / f"{ir.stem}_int8_openvino_model" / f"{ir.stem}_int8.xml"
    if dest.exists() and dest.stat().st_mtime >= ir.stat().st_mtime:
        return dest
    from unideploy.tools.quantize import quantize
    from unideploy.tools.quantize.methods import quiet_third_party

    log(f"quantizing {ir.name} to INT8 (NNCF, {len(calib)} calibration images)")
    with quiet_third_party():  # NNCF's INFO lines and prints: the demo shows its own progress lines only
        return Path(quantize(ir, calib, backend="openvino", out=dest, speed=False, write_report=False).path)


def _speed(predictor: Any, images: list[Path], repeats: int = 1) -> tuple[float, float]:
    """(ms per image, images/s) of end-to-end predict over ``images`` (decode → postprocess)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in predictor.stream(images):
            pass
        best = min(best, time.perf_counter() - t0)
    return best / len(images) * 1e3, len(images) / best


def run_demo(
    out: str | Path = "out/demo",
    *,
    model: str | Path | None = None,
    data: str | Path | None = None,
    backends: list[str] | None = None,
    log: Callable[[str], None] = print,
    tasks: bool = True,
) -> dict[str, Any]:
    """Run the demo and write its report into ``out``; returns the report dict.

    With ``tasks`` (the default) the bundled segmentation, pose and oriented-box models add one row each
    (``report["tasks"]``, :mod:`unideploy.apps.demo_tasks`) and ``tasks_grid.png``.
    """
    from unideploy.tools.bench.discover import model_size_bytes
    from unideploy.tools.evaluate import evaluate_detection, load_dataset
    from unideploy.runtime.load import load
    from unideploy.core.sinks import atomic_write_json, atomic_write_text
    from unideploy.tools.predict import predict
    from unideploy.apps.demo_tasks import run_task_rows, task_grid, task_markdown, task_table
    from unideploy.apps.demo_track import run_demo_tracking, tracking_markdown

    model = Path(model) if model else DEMO_MODEL
    data = Path(data) if data else DEMO_DATA
    if not model.exists() or not data.exists():
        raise SourceError(f"demo assets missing: expected {model} and {data} (see tools/DEMO.md to regenerate them)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(data)
    images = [s.path for s in dataset.samples]
    rows: list[Row] = []
    for v in demo_variants(model, out, backends, log, calib=images):
        tag = f"{v.backend}-{v.precision}"
        log(f"[{tag}] {v.model.name} on {v.device}: predicting {len(images)} images")
        with load(v.model, backend=v.backend, device=v.device, conf=0.25) as pred:
            predict(pred, images, save_json=out / tag / "predictions.json", save_img=out / tag / "images")
            ms, ips = _speed(pred, images)
            compute = PRECISIONS.get(str(pred.session.compute_precision() or "").lower())
            log(f"[{tag}] evaluating mAP")
            metrics = evaluate_detection(pred, dataset)
        rows.append(Row(v.backend, v.device, v.precision, str(v.model.resolve()), round(model_size_bytes(v.model) / 1e6, 2),
                        metrics["mAP50-95"], metrics["mAP50"], ms, ips, metrics["images"],
                        {"per_class": metrics["per_class"], "note": v.note, "compute_precision": compute}))
    if not rows:
        raise SourceError("no backend is installed to run the demo (install unideploy[openvino] or onnxruntime)")
    table = format_table(rows)
    print(table)
    int8_check = _int8_vs_fp32(rows, images, log)
    task_rows = run_task_rows(out, backend=rows[0].backend, log=log) if tasks else []
    if task_rows:
        print(task_table(task_rows))
    report = {
        "model": str(model.resolve()), "data": str(data.resolve()), "rows": [asdict(r) for r in rows],
        "machine": {"system": platform.platform(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "versions": _versions(),
        "int8_vs_fp32": int8_check,
        "tasks": task_rows,  # apps/demo_tasks.py: the -seg/-pose/-obb demo models
        "tracking": run_demo_tracking(out, model=model, log=log),  # apps/demo_track.py: clip -> tracks -> HOTA
    }
    atomic_write_json(out / "report.json", report)
    chart = _bar_chart(rows, out / "speed_accuracy.png", log)
    grid = _grid(out / f"{rows[0].backend}-{rows[0].precision}" / "images", out / "predictions_grid.png")
    atomic_write_text(out / "report.md", _markdown(rows, table, chart, grid, model, data, int8_check)
                      + tracking_markdown(report["tracking"])
                      + "\n".join(["", *task_markdown(task_rows, task_grid(task_rows, out / "tasks_grid.png"))]))
    log(f"report: {out / 'report.md'}")
    return report


def _precision_label(r: Row) -> str:
    return precision_label(r.precision, r.extra.get("compute_precision"))


def format_table(rows: list[Row]) -> str:
    head = f"{'backend':<12} {'device':<7} {'precision':<12} {'size MB':>7} {'mAP50-95':>8} {'mAP50':>6} {'ms/img':>7} {'img/s':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.backend:<12} {r.device:<7} {_precision_label(r):<12} {r.size_mb:>7.2f} {r.map50_95:>8.4f} "
                     f"{r.map50:>6.4f} {r.ms_per_image:>7.1f} {r.images_per_s:>6.1f}")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("unideploy", "numpy", "opencv-python-headless", "onnxruntime", "openvino", "pycocotools"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _bar_chart(rows: list[Row], path: Path, log: Callable[[str], None]) -> Path | None:
    if importlib.util.find_spec("matplotlib") is None:
        log("matplotlib not installed: no chart (pip install 'unideploy[plot]')")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.backend}\n{r.precision}" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.bar(labels, [r.images_per_s for r in rows], color="#4c72b0")
    a.set_title("end-to-end images/s (higher is better)")
    b.bar(labels, [r.map50_95 for r in rows], color="#55a868")
    b.set_ylim(0, 1)
    b.set_title("mAP50-95 on the demo val split")
    for ax, vals in ((a, [r.images_per_s for r in rows]), (b, [r.map50_95 for r in rows])):
        for i, val in enumerate(vals):
            ax.text(i, val, f"{val:.3g}", ha="center", va="bottom", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _grid(folder: Path, path: Path, n: int = 9, cell: tuple[int, int] = (240, 320)) -> Path | None:
    import cv2

    from unideploy.core.ops.letterbox import letterbox
    from unideploy.core.sinks import write_image

    files = sorted(folder.glob("*"))[:n]
    if not files:
        return None
    tiles = [letterbox(cv2.imread(str(f)), cell, pad_value=255)[0] for f in files]
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % 3)
    rows = [np.hstack(tiles[i : i + 3]) for i in range(0, len(tiles), 3)]
    write_image(path, np.vstack(rows))
    return path


def _int8_vs_fp32(rows: list[Row], images: list[Path], log: Callable[[str], None]) -> dict[str, Any] | None:
    """The INT8 model's detections against the FP32 model's on the same images (task level of ``compare``)."""
    fp32 = next((r for r in rows if r.backend == "openvino" and r.precision == "fp32"), None)
    int8 = next((r for r in rows if r.backend == "openvino" and r.precision == "int8"), None)
    if fp32 is None or int8 is None:
        return None
    from unideploy.tools.compare import compare

    res = compare(f"{fp32.model}@openvino", f"{int8.model}@openvino", images, level="task")
    d = res.to_dict()["detection"]
    summary = {k: d[k] for k in ("images", "ref_boxes", "cand_boxes", "matched", "missed", "extra", "mean_iou",
                                 "shift_px_mean", "score_delta_mean", "score_delta_max")}
    summary.update(passed=res.passed, map50_95_drop=round(fp32.map50_95 - int8.map50_95, 4),
                   speedup=round(int8.images_per_s / fp32.images_per_s, 2) if fp32.images_per_s else None)
    log(f"INT8 vs FP32 (OpenVINO): {d['matched']}/{d['ref_boxes']} boxes matched, {d['missed']} missed, "
        f"{d['extra']} extra, mean IoU {d['mean_iou']:.3f}, mean score delta {d['score_delta_mean']:.4f}; "
        f"mAP50-95 {summary['map50_95_drop'] * 100:.2f} points lower, {summary['speedup']}x images/s")
    return summary


def _markdown(rows: list[Row], table: str, chart: Path | None, grid: Path | None, model: Path, data: Path,
              int8: dict[str, Any] | None = None) -> str:
    parts = ["# unideploy demo", "",
             f"Model `{model.name}` on the validation split `{data}` ({rows[0].images} images).", "",
             "```", table, "```", "",
             "ms/img and img/s are end to end (read, decode, preprocess, inference, postprocess) at conf 0.25; "
             "mAP is COCO mAP (pycocotools) at conf 0.001, IoU 0.7, 300 detections per image. A precision in "
             "brackets is what the runtime computes float layers in (OpenVINO picks bf16 on CPUs that support it; "
             "`unideploy predict|eval|bench --precision fp32` keeps fp32; f32 is accepted too).", ""]
    if int8:
        parts += [f"INT8 (OpenVINO, NNCF post-training, calibrated on these images) against FP32, box by box "
                  f"(`unideploy compare`, task level): {int8['matched']} of {int8['ref_boxes']} boxes matched, "
                  f"{int8['missed']} missed, {int8['extra']} extra, mean IoU {int8['mean_iou']:.3f}, mean score "
                  f"delta {int8['score_delta_mean']:.4f}; mAP50-95 {int8['map50_95_drop'] * 100:.2f} points lower, "
                  f"{int8['speedup']}x the images/s.", ""]
    if chart:
        parts += [f"![speed and accuracy]({chart.name})", ""]
    if grid:
        parts += [f"![predictions]({grid.name})", ""]
    return "\n".join(parts)
