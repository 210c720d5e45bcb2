"""``fast_decode``: JPEG DCT-scaled decode before the letterbox vs the exact path, on large images, side by side.

On the large-image eval set (``tools/make_large_shapes.py``: the demo generator at 1280-4000 px, generated here
when missing) with the demo model (320 px input):

* accuracy - mAP50-95 / mAP50 with and without ``fast_decode`` (``unideploy.tools.evaluate``; target: within 0.3
             point);
* boxes    - the exact path's predictions vs the fast path's (what ``compare`` would report): boxes matched one
             to one by class and IoU, the corner differences in model-input pixels (median, p95, max), and the
             boxes one path has and the other lacks (conf >= 0.25);
* decode   - ms per image of the decode stage alone (``read_image``, exact vs DCT-scaled; and simplejpeg's scaled
             decode when it is importable, for the record);
* e2e      - images/s of ``Predictor.stream`` over the folder, exact and fast alternated ``--repeats`` times in one
             process (medians), with the per-stage times.

    python benchmarks/fast_decode.py                               # 60 images, ONNX Runtime, writes the JSON
    python benchmarks/fast_decode.py --backend openvino --repeats 5 --json benchmarks/results/fast_decode_ov.json

The JSON records the machine (CPU, load average before and after) and the library versions: the cores may be
shared, so compare the two paths only within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "src" / "unideploy" / "assets" / "demo" / "shapes_yolov8.onnx"


def ensure_data(folder: Path, n: int) -> Path:
    """The large-image eval set under ``folder`` (generated with tools/make_large_shapes.py when missing)."""
    ann = folder / "annotations" / "instances_val.json"
    if not ann.is_file() or len(json.loads(ann.read_text())["images"]) < n:
        subprocess.run([sys.executable, str(REPO / "tools" / "make_large_shapes.py"), "--out", str(folder), "--n", str(n)],
                       check=True)
    return ann


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], 1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def box_differences(exact: list, fast: list, imgsz: int, conf: float = 0.25) -> dict:
    """Exact vs fast detections per image: greedy one-to-one matching (same class, IoU >= 0.5), corner
    differences in model-input pixels, and the unmatched boxes on either side."""
    diffs, only_exact, only_fast, pairs = [], 0, 0, 0
    for a, b in zip(exact, fast):
        ka, kb = a.confidence >= conf, b.confidence >= conf
        xa, xb, ca, cb = a.xyxy[ka], b.xyxy[kb], a.class_id[ka], b.class_id[kb]
        px = max(a.image_shape) / imgsz  # full-image pixels per model-input pixel
        used = np.zeros(len(xb), bool)
        iou = _iou(xa, xb) if len(xa) and len(xb) else np.zeros((len(xa), len(xb)))
        for i in np.argsort(-a.confidence[ka], kind="stable"):
            cand = np.where(~used & (cb == ca[i]))[0]
            j = cand[np.argmax(iou[i, cand])] if len(cand) else None
            if j is None or iou[i, j] < 0.5:
                only_exact += 1
                continue
            used[j] = True
            pairs += 1
            diffs.append(float(np.abs(xa[i] - xb[j]).max() / px))
        only_fast += int((~used).sum())
    d = np.array(diffs) if diffs else np.zeros(1)
    return {"matched": pairs, "only_exact": only_exact, "only_fast": only_fast, "conf": conf,
            "corner_diff_model_px": {"median": round(float(np.median(d)), 3), "p95": round(float(np.percentile(d, 95)), 3),
                                     "max": round(float(d.max()), 3)}}


def decode_times(files: list[Path], factor_for, repeats: int) -> dict:
    """Median ms per image of the decode stage: exact, DCT-scaled (OpenCV), and simplejpeg's when importable."""
    import cv2

    from unideploy.core.sources import read_image

    datas = [np.fromfile(f, np.uint8) for f in files]

    def timed(fn) -> float:
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for f, d in zip(files, datas):
                fn(f, d)
            runs.append((time.perf_counter() - t0) / len(files) * 1e3)
        return round(statistics.median(runs), 2)

    out = {"exact_ms": timed(lambda f, d: read_image(f)),
           "fast_ms": timed(lambda f, d: read_image(f, decode_scale=factor_for)),
           "opencv_imdecode_full_ms": timed(lambda f, d: cv2.imdecode(d, cv2.IMREAD_COLOR))}
    try:
        import simplejpeg  # not a dependency: measured only where it is installed

        def sj(f, d):
            h, w = cv2.imdecode(d, cv2.IMREAD_REDUCED_COLOR_8).shape[:2]  # stand-in for the header read
            simplejpeg.decode_jpeg(d.tobytes(), colorspace="BGR", min_height=h, min_width=w)

        out["simplejpeg_scaled_ms_incl_header_probe"] = timed(sj)
        out["simplejpeg_full_ms"] = timed(lambda f, d: simplejpeg.decode_jpeg(d.tobytes(), colorspace="BGR"))
    except ImportError:
        out["simplejpeg"] = "not installed"
    return out


def stream_rate(pred, files: list[Path]) -> dict:
    from unideploy.runtime.predictor import StageTimes

    pred.times = StageTimes()  # fresh per-stage samples for this pass (the engine reads it when a stream starts)
    t0 = time.perf_counter()
    n = sum(1 for out in pred.stream(files) if out.ok)
    wall = time.perf_counter() - t0
    return {"images_per_s": n / wall, "stages_ms": {k: round(v * 1e3, 2) for k, v in pred.times.summary().items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/unideploy_shapes_large"), help="large-image eval set folder")
    ap.add_argument("--n", type=int, default=60, help="images in the eval set (generated when missing)")
    ap.add_argument("--model", type=Path, default=DEMO_MODEL)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--repeats", type=int, default=5, help="alternating exact / fast stream passes (medians)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "fast_decode.json")
    args = ap.parse_args(argv)

    import unideploy
    from unideploy.core.sources import read_image
    from unideploy.tools.bench import library_versions, machine_info
    from unideploy.tools.evaluate import evaluate

    ann = ensure_data(args.data, args.n)
    images = args.data / "images" / "val"
    files = sorted(images.glob("*.jpg"))[: args.n]
    machine_before = machine_info()
    opts = {"backend": args.backend, **({"precision": "f32"} if args.backend == "openvino" else {})}
    acc = {}
    for name, fast in (("exact", False), ("fast", True)):
        r = evaluate(str(args.model), str(ann), images=str(images), fast_decode=fast, **opts)
        acc[name] = {k: round(float(r[k]) * 100, 2) for k in ("mAP50-95", "mAP50", "mAP75")}
    acc["delta_points"] = {k: round(acc["fast"][k] - acc["exact"][k], 2) for k in ("mAP50-95", "mAP50", "mAP75")}

    with unideploy.load(args.model, **opts) as exact, unideploy.load(args.model, fast_decode=True, **opts) as fast:
        imgsz = max(exact.spec.imgsz)
        factors = [fast.adapter.decode_factor(*read_image(f).shape[:2]) for f in files]
        boxes = box_differences(exact(files, conf=0.25), fast(files, conf=0.25), imgsz)
        decode = decode_times(files, fast.adapter.decode_factor, max(1, args.repeats // 2))
        for p in (exact, fast):  # warm-up pass each
            stream_rate(p, files[:8])
        runs: dict[str, list] = {"exact": [], "fast": []}
        for _ in range(args.repeats):
            runs["exact"].append(stream_rate(exact, files))
            runs["fast"].append(stream_rate(fast, files))
    e2e = {}
    for name, rs in runs.items():
        rates = [r["images_per_s"] for r in rs]
        mid = rs[rates.index(statistics.median_low(rates))]
        e2e[name] = {"images_per_s_median": round(statistics.median(rates), 2), "images_per_s_runs": [round(x, 2) for x in rates],
                     "stages_ms_of_median_run": mid["stages_ms"]}
    e2e["speedup"] = round(e2e["fast"]["images_per_s_median"] / e2e["exact"]["images_per_s_median"], 3)
    sides = [s for f in files for s in read_image(f).shape[:2]]
    report = {
        "settings": {"model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
                     "backend": args.backend, "repeats": args.repeats, "data": str(args.data),
                     "generator": "tools/make_large_shapes.py (seed 11)"},
        "data": {"images": len(files), "min_side": min(sides), "max_side": max(sides),
                 "dct_factors": {str(k): factors.count(k) for k in sorted(set(factors))}},
        "accuracy_percent": acc, "box_differences_exact_vs_fast": boxes, "decode": decode, "end_to_end": e2e,
        "machine_before": machine_before, "machine_after": machine_info(), "versions": library_versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("data", "accuracy_percent", "box_differences_exact_vs_fast", "decode")}, indent=2))
    print(f"end to end ({args.backend}): exact {e2e['exact']['images_per_s_median']} images/s, fast "
          f"{e2e['fast']['images_per_s_median']} images/s ({e2e['speedup']}x); load average "
          f"{machine_before['load_average']} before / {report['machine_after']['load_average']} after")
    return report


if __name__ == "__main__":
    main()
