"""Video-rate RT-DETR on this CPU: end-to-end frames/s of the demo RT-DETR and of a full-size RT-DETR-l.

The RT-DETR write-up (seed 004) calls OpenVINO's 3-4 FPS on CPU "far from enough for video". This script
measures what unideploy gets end to end (decode a video file, letterbox, infer, decode boxes) for

* ``demo``: the bundled RT-DETR demo model (``shapes_rtdetr.onnx``, 320 px, trained), and
* ``rtdetr-l``: Ultralytics ``RTDETR("rtdetr-l.yaml")`` exported at 640 (random weights: speed only),

each as the FP32 IR at true FP32 (``INFERENCE_PRECISION_HINT=f32``), the FP32 IR at the CPU plugin's default
precision (bf16 on CPUs with native bf16), and an INT8 IR (NNCF, built by ``benchmarks/int8_amx.py``), in two
ways: ``serial`` (one frame at a time: decode, preprocess, infer, postprocess in one thread, latency hint) and
``pipelined`` (``Predictor.stream``: decode/preprocess threads, OpenVINO's number of requests in flight under the
throughput hint, postprocess thread). ``pure`` is inference alone (async, resident input) for reference.
Every configuration is timed once per round, rounds interleaved; the table gives medians.

    python benchmarks/rtdetr_video.py --out benchmarks/results/rtdetr_video.json
    python benchmarks/rtdetr_video.py --models demo --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import int8_amx  # noqa: E402  (models and INT8 IRs, shared with the per-layer study)

REPO = Path(__file__).resolve().parents[1]
MODELS = {"demo": "demo-rtdetr", "rtdetr-l": "rtdetr-l"}
#: INT8 IR used per model (the int8_amx variant)
INT8 = {"demo": "int8_rtdetr", "rtdetr-l": "int8_rtdetr"}


def make_video(path: Path, frames: int, size: tuple[int, int] = (640, 480), fps: float = 30.0) -> Path:
    """An MP4 clip of the demo val images (letterboxed into ``size``), cycled to ``frames`` frames."""
    import cv2
    import numpy as np

    if path.is_file():
        cap = cv2.VideoCapture(str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        if n >= frames:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    images = sorted((int8_amx.DEMO / "val" / "images").glob("*"))
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(frames):
        img = cv2.imread(str(images[i % len(images)]))
        s = min(w / img.shape[1], h / img.shape[0])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)))
        canvas = np.full((h, w, 3), 114, np.uint8)
        y, x = (h - img.shape[0]) // 2, (w - img.shape[1]) // 2
        canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
        writer.write(canvas)
    writer.release()
    return path


def configs(files: dict[str, Path], model: str) -> list[dict[str, Any]]:
    return [dict(variant="fp32", precision="f32", xml=files["fp32"]),
            dict(variant="fp32", precision="default", xml=files["fp32"]),
            dict(variant="int8", precision="default", xml=files[INT8[model]])]


def _load(xml: Path, precision: str, hint: str) -> Any:
    import unideploy

    opts: dict[str, Any] = {"hint": hint}
    if precision != "default":
        opts["precision"] = precision
    pred = unideploy.load(xml, backend="openvino", **opts)
    return pred


def measure(cfg: dict[str, Any], video: Path, frame: Any, pure_s: float) -> dict[str, Any]:
    """serial, pipelined and pure figures of one configuration."""
    from unideploy.tools.bench import end_to_end, end_to_end_serial, input_batch, pure_inference

    out: dict[str, Any] = {}
    with _load(cfg["xml"], cfg["precision"], "latency") as pred:
        pred(frame)  # compile and warm up outside the timed pass
        r = end_to_end_serial(pred, str(video), warmup_items=0)
        out["serial"] = r.images_per_s
        out["compute_precision"] = pred.session.compute_precision()
    with _load(cfg["xml"], cfg["precision"], "throughput") as pred:
        pred(frame)
        r = end_to_end(pred, str(video), warmup_items=0)
        out["pipelined"] = r.images_per_s
        out["requests"] = r.requests
        x = input_batch(pred, 1, frame)
        p = pure_inference(pred.session, x, warmup=2, loop=None, duration=pure_s, mode="async")
        out["pure"] = p.throughput
    out["load_average"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,rtdetr-l")
    ap.add_argument("--frames", default="demo=150,rtdetr-l=24", help="frames per pass, per model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pure-seconds", type=float, default=4.0)
    ap.add_argument("--work", default=str(REPO / "out" / "int8_amx"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import cv2

    frames = dict(kv.split("=") for kv in a.frames.split(","))
    result: dict[str, Any] = {"cpu": int8_amx.cpu_flags(), "cpu_count": os.cpu_count(), "rounds": a.rounds,
                              "load_average_start": list(os.getloadavg()), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "models": {}}
    for model in a.models.split(","):
        files = int8_amx.build(MODELS[model], Path(a.work), only=[INT8[model]])
        n = int(frames[model])
        video = make_video(Path(a.work) / "video" / f"clip_{n}.mp4", n)
        cap = cv2.VideoCapture(str(video))
        ok, frame = cap.read()
        cap.release()
        cfgs = configs(files, model)
        rows: dict[str, list[dict[str, Any]]] = {f"{c['variant']}@{c['precision']}": [] for c in cfgs}
        for r in range(a.rounds):
            for c in cfgs:
                key = f"{c['variant']}@{c['precision']}"
                m = measure(c, video, frame, a.pure_seconds)
                rows[key].append(m)
                print(f"{model} round {r}: {key:<14} serial {m['serial']:7.2f}  pipelined {m['pipelined']:7.2f} "
                      f"(x{m['requests']})  pure {m['pure']:7.2f} frames/s  [{m['compute_precision']}, load "
                      f"{m['load_average']:.1f}]", flush=True)
        med = {k: {f: statistics.median(x[f] for x in v) for f in ("serial", "pipelined", "pure")} for k, v in rows.items()}
        result["models"][model] = {"files": {k: str(v) for k, v in files.items()}, "int8_variant": INT8[model],
                                   "frames": n, "video": str(video), "rounds": rows, "median": med}
        print(f"\n| {model} | float layers | serial frames/s | pipelined frames/s | pure inference/s |\n|---|---|---:|---:|---:|")
        for k, v in med.items():
            print(f"| {k} | {rows[k][0]['compute_precision']} | {v['serial']:.2f} | {v['pipelined']:.2f} | {v['pure']:.2f} |")
    result["load_average_end"] = list(os.getloadavg())
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
