"""Tracking cost: the tracker alone per frame (50 objects), and end-to-end tracking frames/s vs Ultralytics.

1. Tracker cost: the same recorded detections (50 moving objects, misses, clutter) fed to our ByteTrack / BoT-SORT
   (no camera motion) and to Ultralytics' BYTETracker / BOTSORT; the median of the per-frame ``update`` times.
2. End to end: ``Predictor.track`` vs Ultralytics ``YOLO(model).track(stream=True)`` on the same generated video and
   ONNX model, each run a fresh Python process (interleaved, repeated; medians of frames/s over the whole video).

    python benchmarks/track.py                          # demo model, 200-frame 640x480 video, 3 repeats
    python benchmarks/track.py --model m.onnx --video clip.mp4 --repeats 5
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
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src/unideploy/assets/demo/shapes_yolov8.onnx"

CHILD = r"""
import sys, time, json
tool, model, video, tracker = sys.argv[1:5]
n = 0; ids = set()
t0 = time.perf_counter()
if tool == "ultralytics":
    from ultralytics import YOLO
    m = YOLO(model, task="detect")
    for r in m.track(video, stream=True, tracker=f"{tracker}.yaml", conf=0.25, iou=0.7, verbose=False):
        n += 1
        if r.boxes.id is not None: ids.update(r.boxes.id.int().tolist())
else:
    import unideploy
    with unideploy.load(model, conf=0.25, iou=0.7) as p:
        for out in p.track(video, tracker):
            n += 1; ids.update(out.result.tracker_id.tolist())
t1 = time.perf_counter()
print("RESULT " + json.dumps({"frames": n, "fps": n / (t1 - t0), "ids": len(ids)}))
"""


def sequence(objects: int = 50, frames: int = 300, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(50, 1870, (objects, 2))
    vel = rng.normal(0, 3, (objects, 2))
    wh = rng.uniform(20, 90, (objects, 2))
    out = []
    for _ in range(frames):
        vel += rng.normal(0, 0.2, vel.shape)
        pos += vel
        alive = rng.random(objects) > 0.05
        boxes = np.concatenate([pos - wh / 2, pos + wh / 2], 1)[alive] + rng.normal(0, 1.0, (alive.sum(), 4))
        out.append((boxes.astype(np.float32), rng.uniform(0.15, 0.95, alive.sum()).astype(np.float32),
                    np.zeros(alive.sum(), np.int64)))
    return out


def tracker_cost(kind: str, seq: list) -> dict:
    from ultralytics.engine.results import Boxes
    from ultralytics.trackers.bot_sort import BOTSORT
    from ultralytics.trackers.byte_tracker import BYTETracker

    from unideploy.core.results import Detections
    from unideploy.runtime.tracking import make_tracker, tracker_config

    cfg = tracker_config(kind, {"gmc_method": "none"} if kind == "botsort" else None)
    ours, ref = make_tracker(cfg), (BYTETracker if kind == "bytetrack" else BOTSORT)(SimpleNamespace(**cfg.to_dict()))
    t_ours, t_ref, tracked = [], [], []
    for b, c, k in seq:
        det = Detections(b, c, k)
        boxes = Boxes(np.concatenate([b, c[:, None], k[:, None].astype(np.float32)], 1), (1080, 1920))
        t = time.perf_counter()
        out = ours.update(det)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref.update(boxes)
        t_ref.append(time.perf_counter() - t)
        tracked.append(len(out))
    skip = 10  # warm-up: the first frames have no tracks to match
    return {"ours_ms": statistics.median(t_ours[skip:]) * 1e3, "ultralytics_ms": statistics.median(t_ref[skip:]) * 1e3,
            "tracks_per_frame": statistics.median(tracked[skip:])}


def run_child(tool: str, model: str, video: str, tracker: str) -> dict:
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": os.environ.get("YOLO_CONFIG_DIR") or tempfile.mkdtemp()}
    proc = subprocess.run([sys.executable, "-c", CHILD, tool, model, video, tracker], capture_output=True, text=True,
                          env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{tool} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEMO))
    ap.add_argument("--video", default=None, help="default: a generated 200-frame 640x480 video of moving shapes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trackers", default="bytetrack,botsort")
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp())
    kinds = args.trackers.split(",")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    seq = sequence()
    print("\n## tracker cost per frame, 50 objects (median ms)\n\n| tracker | unideploy | Ultralytics | ratio |")
    print("|---|---|---|---|")
    for kind in kinds:
        r = tracker_cost(kind, seq)
        print(f"| {kind} | {r['ours_ms']:.3f} | {r['ultralytics_ms']:.3f} | {r['ultralytics_ms'] / r['ours_ms']:.1f}x |")
    if args.skip_e2e:
        return
    video = args.video
    if video is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from track_helpers import shapes_video

        video = str(shapes_video(Path(tempfile.mkdtemp()) / "shapes.avi", frames=200, size=(640, 480)))
    print(f"\n## end to end: {Path(args.model).name} on {Path(video).name}, fresh processes, median of "
          f"{args.repeats}\n\n| tracker | unideploy fps | Ultralytics fps | ratio | ids (ours / theirs) |\n|---|---|---|---|---|")
    for kind in kinds:
        runs: dict[str, list] = {"unideploy": [], "ultralytics": []}
        for _ in range(args.repeats):
            for tool in runs:
                runs[tool].append(run_child(tool, args.model, video, kind))
        ours = statistics.median(r["fps"] for r in runs["unideploy"])
        theirs = statistics.median(r["fps"] for r in runs["ultralytics"])
        print(f"| {kind} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x | "
              f"{runs['unideploy'][0]['ids']} / {runs['ultralytics'][0]['ids']} |")


if __name__ == "__main__":
    main()
