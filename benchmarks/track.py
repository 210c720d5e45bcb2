"""Tracking cost: the tracker alone per frame (50 objects), and end-to-end tracking frames/s vs Ultralytics.

1. Tracker cost: the same recorded detections (50 moving objects, misses, clutter) fed to our ByteTrack / BoT-SORT
   (no camera motion) and to Ultralytics' BYTETracker / BOTSORT; the median of the per-frame ``update`` times.
2. End to end: ``Predictor.track`` vs Ultralytics ``YOLO(model).track(stream=True)`` on the same generated video and
   ONNX model, each run a fresh Python process (interleaved, repeated; medians of frames/s over the whole video).
3. Accuracy: HOTA, IDF1, MOTA, DetA, AssA, ID switches (TrackEval) of unideploy's tracking and of Ultralytics'
   ``track`` on the same detector and the same generated sequences with ground truth (``tools/make_tracks.py``:
   crossings, occlusions, objects entering and leaving, speed changes, camera jitter), and the share of frames
   where both give the same ids and boxes (within 0.01 px).

    python benchmarks/track.py                          # demo model, 200-frame 640x480 video, 3 repeats
    python benchmarks/track.py --model m.onnx --video clip.mp4 --repeats 5
    python benchmarks/track.py --skip-cost --skip-e2e --sequences 5   # accuracy only

Results go to ``benchmarks/results/track.json`` (``--json``) with the machine load at the start.
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


def accuracy(model: str, kinds: list[str], sequences: int, frames: int, seed: int) -> dict:
    """HOTA / IDF1 / ... of both tools on generated sequences, and how many frames agree id for id."""
    sys.path.insert(0, str(ROOT / "tools"))
    sys.path.insert(0, str(ROOT / "tests"))
    import make_tracks
    from track_helpers import ultralytics_mot_rows

    from unideploy.tools.evaluate.tracking import evaluate_tracking, load_mot, score_tracks

    data = Path(tempfile.mkdtemp()) / "tracks"
    make_tracks.generate(data, sequences=sequences, frames=frames, seed=seed)
    seqs = load_mot(data)
    keys = ("HOTA", "IDF1", "MOTA", "DetA", "AssA", "IDSW", "tracks", "gt_tracks")
    out: dict = {"sequences": sequences, "frames_per_sequence": frames, "seed": seed,
                 "generator": f"tools/make_tracks.py --sequences {sequences} --frames {frames} --seed {seed}"}
    for kind in kinds:
        save = data.parent / f"ours_{kind}"
        ours = evaluate_tracking(model, data, tracker=kind, save_mot=save)
        theirs_rows = [ultralytics_mot_rows(model, str(s.source), kind) for s in seqs]
        theirs = score_tracks([(s.gt, r, s.frames) for s, r in zip(seqs, theirs_rows)], names=seqs[0].names,
                              labels=[s.name for s in seqs])
        same = total = 0
        for s, rows in zip(seqs, theirs_rows):
            mine = np.loadtxt(save / f"{s.name}.txt", delimiter=",", ndmin=2)
            for f in range(1, s.frames + 1):
                a, b = rows[rows[:, 0] == f], mine[mine[:, 0] == f] if len(mine) else np.zeros((0, 9))
                total += 1
                same += len(a) == len(b) and (a[:, 1] == b[:, 1]).all() and np.abs(a[:, 2:6] - b[:, 2:6]).max(initial=0) <= 0.01
        out[kind] = {"unideploy": {k: ours["metrics"][k] for k in keys},
                     "ultralytics": {k: theirs["metrics"][k] for k in keys},
                     "delta_HOTA": ours["metrics"]["HOTA"] - theirs["metrics"]["HOTA"],
                     "delta_IDF1": ours["metrics"]["IDF1"] - theirs["metrics"]["IDF1"],
                     "frames_identical": f"{same}/{total}",
                     "per_sequence": {n: {"unideploy": {k: ours["sequences"][n][k] for k in keys[:6]},
                                          "ultralytics": {k: theirs["sequences"][n][k] for k in keys[:6]}}
                                      for n in ours["sequences"]}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEMO))
    ap.add_argument("--video", default=None, help="default: a generated 200-frame 640x480 video of moving shapes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trackers", default="bytetrack,botsort")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--sequences", type=int, default=3, help="accuracy: generated sequences (default 3)")
    ap.add_argument("--frames", type=int, default=120, help="accuracy: frames per sequence (default 120)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/track.json"))
    args = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp())
    kinds = args.trackers.split(",")
    load = os.getloadavg()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {load[0]:.1f}")
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "load_average_at_start": [round(v, 2) for v in load]},
                     "model": str(Path(args.model).name)}
    if not args.skip_cost:
        seq = sequence()
        print("\n## tracker cost per frame, 50 objects (median ms)\n\n| tracker | unideploy | Ultralytics | ratio |")
        print("|---|---|---|---|")
        results["tracker_cost_ms"] = {}
        for kind in kinds:
            r = tracker_cost(kind, seq)
            results["tracker_cost_ms"][kind] = r
            print(f"| {kind} | {r['ours_ms']:.3f} | {r['ultralytics_ms']:.3f} | {r['ultralytics_ms'] / r['ours_ms']:.1f}x |")
    if not args.skip_accuracy:
        acc = accuracy(args.model, kinds, args.sequences, args.frames, args.seed)
        results["accuracy"] = acc
        print(f"\n## accuracy on {args.sequences} generated sequences x {args.frames} frames (TrackEval)\n\n"
              "| tracker | tool | HOTA | IDF1 | MOTA | DetA | AssA | IDSW | frames identical |\n|---|---|---|---|---|---|---|---|---|")
        for kind in kinds:
            for tool in ("unideploy", "ultralytics"):
                m = acc[kind][tool]
                print(f"| {kind} | {tool} | {m['HOTA']:.4f} | {m['IDF1']:.4f} | {m['MOTA']:.4f} | {m['DetA']:.4f} | "
                      f"{m['AssA']:.4f} | {m['IDSW']} | {acc[kind]['frames_identical'] if tool == 'unideploy' else ''} |")
    if not args.skip_e2e:
        results["end_to_end"] = end_to_end(args, kinds)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def end_to_end(args: argparse.Namespace, kinds: list[str]) -> dict:
    """Frames/s of both tools, fresh processes, interleaved; medians."""
    video = args.video
    if video is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from track_helpers import shapes_video

        video = str(shapes_video(Path(tempfile.mkdtemp()) / "shapes.avi", frames=200, size=(640, 480)))
    print(f"\n## end to end: {Path(args.model).name} on {Path(video).name}, fresh processes, median of "
          f"{args.repeats}\n\n| tracker | unideploy fps | Ultralytics fps | ratio | ids (ours / theirs) |\n|---|---|---|---|---|")
    out = {}
    for kind in kinds:
        runs: dict[str, list] = {"unideploy": [], "ultralytics": []}
        for _ in range(args.repeats):
            for tool in runs:
                runs[tool].append(run_child(tool, args.model, video, kind))
        ours = statistics.median(r["fps"] for r in runs["unideploy"])
        theirs = statistics.median(r["fps"] for r in runs["ultralytics"])
        out[kind] = {"unideploy_fps": ours, "ultralytics_fps": theirs, "ratio": ours / theirs}
        print(f"| {kind} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x | "
              f"{runs['unideploy'][0]['ids']} / {runs['ultralytics'][0]['ids']} |")
    return out


if __name__ == "__main__":
    main()
