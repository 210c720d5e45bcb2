"""unideploy predict vs Ultralytics predict on the same images and the same exported model files.

Each run is a fresh Python process (so cold start and peak RSS are honest): it records the time of its
first result relative to the parent's launch time, the steady-state throughput over all images, and its
own peak RSS. Runs are interleaved and repeated; the table shows medians and the ratios.

Rows per runtime: ``ultralytics`` (``YOLO(model).predict(folder, stream=True)``); ``unideploy``
(``unideploy.predict(model, folder)``, what ``unideploy predict DIR`` runs: over files it uses the runtime's
throughput hint); ``unideploy:fast`` (the same with ``fast_decode``); ``unideploy:in-model`` (OpenVINO
PrePostProcessor); ``unideploy:load`` (``unideploy.load(model).stream(folder)``, the interactive API at the latency
hint); ``pure`` (inference alone on one resident preprocessed image, throughput hint, runs in flight: the bound no
end-to-end row can pass).

    python benchmarks/vs_ultralytics.py                       # YOLOv8n 640 (random weights), 200 images
    python benchmarks/vs_ultralytics.py --model m.onnx --ov m_openvino_model/m.xml --images DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import os, sys, time, json
t_launch = float(sys.argv[1]); tool, model, images = sys.argv[2], sys.argv[3], sys.argv[4]
first = None; n = 0
if tool == "ultralytics":
    from ultralytics import YOLO
    m = YOLO(model, task="detect")
    for r in m.predict(images, stream=True, conf=0.25, iou=0.7, verbose=False):
        n += 1
        if first is None: first = time.time()
elif tool.startswith("pure:"):  # the bound: inference alone on one resident preprocessed image, runs in flight
    import glob, cv2, unideploy
    backend = tool.split(":")[1]
    with unideploy.load(model, backend=backend, hint="throughput") as p:
        x, _ = p.preprocess(cv2.imread(sorted(glob.glob(os.path.join(images, "*")))[0]))
        feeds = {p.session.inputs[0].name: x[None]}
        runner = p.session.async_runner(p.requests)
        for _ in range(8):
            runner.submit(feeds)
        runner.wait_all()
        first = time.time()
        futs = []
        for _ in range(120):  # outputs collected as runs finish (holding all 120 would inflate peak RSS)
            futs.append(runner.submit(feeds))
            if len(futs) > p.requests:
                futs.pop(0).result()
        [f.result() for f in futs]
        n = 121
        runner.close()
else:
    import unideploy
    backend = tool.split(":")[1]
    variant = tool.split(":")[2] if tool.count(":") > 1 else ""
    opts = {"in-model": {"in_model_preprocess": True}, "fast": {"fast_decode": True},
            "load": {}}.get(variant, {})

    class Count:  # a sink: counts results, notes the first
        def add(self, outcome):
            global n, first
            n += 1
            if first is None: first = time.time()
        def close(self):
            pass

    if variant == "load":  # unideploy.load(...).stream(): the interactive API (latency hint)
        with unideploy.load(model, backend=backend, conf=0.25, iou=0.7) as p:
            for out in p.stream(images):
                n += 1
                if first is None: first = time.time()
    else:  # unideploy.predict over the folder, as `unideploy predict DIR`: a batch job (throughput hint)
        unideploy.predict(model, images, backend=backend, conf=0.25, iou=0.7, sinks=[Count()],
                          fast_decode=opts.get("fast_decode", False),
                          backend_options={k: v for k, v in opts.items() if k != "fast_decode"} or None)
end = time.time()
# VmHWM is this process's own peak (ru_maxrss would carry the parent's peak across fork+exec)
rss_mb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print("RESULT " + json.dumps({"n": n, "cold_s": first - t_launch, "ips": (n - 1) / (end - first), "total_s": end - t_launch, "rss_mb": rss_mb}))
"""


def run_child(tool: str, model: str, images: str) -> dict:
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, repr(t), tool, model, images], capture_output=True, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{tool} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="ONNX model (default: YOLOv8n 640 with random weights, built here)")
    ap.add_argument("--ov", help="OpenVINO .xml of the same model (default: exported with the built model)")
    ap.add_argument("--images", help="folder of images (default: 200 generated JPEGs of mixed sizes)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", help="backends to run, comma-separated (default: onnxruntime,openvino)")
    ap.add_argument("--json", default="benchmarks/results/vs_ultralytics.json")
    args = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp())
    work = Path(tempfile.mkdtemp(prefix="vs_ul_"))
    from unideploy.testing import build_random_yolo, write_scenes

    if not args.model:
        built = build_random_yolo("yolov8n.yaml", work / "model", 640, openvino=True)
        args.model, args.ov = str(built["onnx"]), str(built["openvino"])
    if not args.images:
        sizes = [[(480, 640), (720, 1280), (640, 480), (1080, 1920), (375, 500)][i % 5] for i in range(200)]
        write_scenes(work / "images", sizes, seed=3)
        args.images = str(work / "images")
    # unideploy: `unideploy.predict` over the folder (its default for files: the throughput hint); ":load": the
    # interactive `unideploy.load(...).stream()` (latency hint); "pure": inference alone, the bound for both
    configs = [("ultralytics", args.model, "onnxruntime"), ("unideploy:onnxruntime", args.model, "onnxruntime"),
               ("unideploy:onnxruntime:fast", args.model, "onnxruntime"),
               ("unideploy:onnxruntime:load", args.model, "onnxruntime"), ("pure:onnxruntime", args.model, "onnxruntime")]
    if args.ov:
        ov_dir = str(Path(args.ov).parent)
        configs += [("ultralytics", ov_dir, "openvino"), ("unideploy:openvino", args.ov, "openvino"),
                    ("unideploy:openvino:in-model", args.ov, "openvino"),  # PrePostProcessor, at any precision
                    ("unideploy:openvino:fast", args.ov, "openvino"),  # --fast-decode (JPEG DCT scaling)
                    ("unideploy:openvino:load", args.ov, "openvino"), ("pure:openvino", args.ov, "openvino")]
    if args.only:
        configs = [c for c in configs if c[2] in args.only.split(",")]
    results: dict[tuple[str, str], list[dict]] = {}
    for rep in range(args.repeats):
        for tool, model, backend in configs:
            r = run_child(tool, model, args.images)
            name = tool.split(":")[0] + (":" + tool.split(":")[2] if tool.count(":") > 1 else "")
            results.setdefault((name, backend), []).append(r)
            print(f"  run {rep + 1}/{args.repeats} {tool:<22} {backend:<12} {r['ips']:.1f} img/s  cold {r['cold_s']:.2f} s  rss {r['rss_mb']:.0f} MB", file=sys.stderr)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("ips", "cold_s", "rss_mb")} for k, v in results.items()}
    rows = []
    print(f"\n{'backend':<12} {'tool':<12} {'images/s':>9} {'cold start s':>13} {'peak RSS MB':>12}")
    for (tool, backend), m in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{backend:<12} {tool:<12} {m['ips']:>9.1f} {m['cold_s']:>13.2f} {m['rss_mb']:>12.0f}")
        rows.append({"backend": backend, "tool": tool, **m})
    ratios = {}
    for backend, tool in [(b, t) for b in ("onnxruntime", "openvino") for t in ("unideploy", "unideploy:in-model",
                                                                              "unideploy:fast", "unideploy:load", "pure")]:
        u, o = med.get(("ultralytics", backend)), med.get((tool, backend))
        if u and o:
            if tool != "unideploy":
                ratios[f"{backend} {tool.split(':')[-1]}"] = {"throughput_x": o["ips"] / u["ips"]}
                print(f"{backend} {tool}: throughput {o['ips'] / u['ips']:.2f}x Ultralytics")
                continue
            ratios[backend] = {"throughput_x": o["ips"] / u["ips"], "cold_start_fraction": o["cold_s"] / u["cold_s"],
                               "rss_fraction": o["rss_mb"] / u["rss_mb"]}
            print(f"{backend}: throughput {ratios[backend]['throughput_x']:.2f}x Ultralytics, cold start "
                  f"{ratios[backend]['cold_start_fraction']:.2f} of Ultralytics', peak RSS {ratios[backend]['rss_fraction']:.2f} of Ultralytics'")
    import numpy
    import onnxruntime

    report = {"rows": rows, "ratios": ratios, "repeats": args.repeats, "images": args.images, "model": args.model,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
              "versions": {"numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
