"""Soak test: many predictions per backend (images and a long generated video), watching RSS, threads and files.

Each backend runs cycles of (a stream over a folder of varied images, single-image and list calls, a stream over
a long generated video) until ``--n`` predictions are done. Resource samples are taken about every 1% of the run.
Verdict per backend: the RSS growth from mid-run to the end (median of the samples around 50% vs the median of the
last 10%) must stay within min(5% of the mid-run RSS, 100 MB); OS threads and open files must not grow either.

    python benchmarks/soak.py                                   # 100,000 predictions per backend, tiny YOLOv8n
    python benchmarks/soak.py --short                           # CI size: 3,000 predictions per backend
    python benchmarks/soak.py --backends onnxruntime --n 20000 --leak-kb 64   # must FAIL: a leaking stub

The model is a random-weight YOLOv8n exported at ``--imgsz`` (default 64) so that a run is dominated by the
pipeline (decode, letterbox, threads, queues, NMS, runtime calls) rather than by convolution arithmetic.
Writes a table to stdout and ``--json`` (default out/soak/soak.json) with every sample.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from unideploy.tools.bench.timers import open_fds, os_threads  # noqa: E402  (shared process probes)

os.environ.setdefault("YOLO_OFFLINE", "1")


# ------------------------------------------------------------------------------------------ probes


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@dataclass
class Sample:
    n: int
    t: float
    rss_mb: float
    threads: int
    fds: int


@dataclass
class SoakResult:
    backend: str
    predictions: int
    seconds: float
    rss_start_mb: float
    rss_mid_mb: float
    rss_end_mb: float
    growth_mb: float
    limit_mb: float
    slope_mb_per_10k: float
    threads_mid: int
    threads_end: int
    fds_mid: int
    fds_end: int
    passed: bool
    video_frames: int = 0
    images: int = 0
    errors: int = 0
    reasons: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    cycles: list[Sample] = field(default_factory=list)

    def row(self) -> str:
        return (
            f"| {self.backend} | {self.predictions:,} ({self.video_frames:,} video) | {self.seconds:,.0f} | "
            f"{self.rss_mid_mb:.0f} → {self.rss_end_mb:.0f} | {self.growth_mb:+.1f} (limit {self.limit_mb:.1f}) | "
            f"{self.slope_mb_per_10k:+.2f} | {self.threads_mid} → {self.threads_end} | {self.fds_mid} → {self.fds_end} | "
            f"{'PASS' if self.passed else 'FAIL: ' + '; '.join(self.reasons)} |"
        )


HEADER = (
    "| backend | predictions | s | RSS mid → end (MB) | growth MB | MB / 10k (2nd half) | OS threads | open files | verdict |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def judge(samples: list[Sample], backend: str, boundaries: list[Sample] | None = None, **counts: Any) -> SoakResult:
    """Verdict from the samples: RSS growth over the second half of the run; threads and open files at the
    cycle boundaries (no stream running) at mid-run vs at the end."""
    total = samples[-1].n
    mid = [s for s in samples if 0.45 * total <= s.n <= 0.55 * total] or [
        min(samples, key=lambda s: abs(s.n - total / 2))
    ]
    tail = [s for s in samples if s.n >= 0.9 * total] or samples[-1:]
    rss_mid = statistics.median(s.rss_mb for s in mid)
    rss_end = statistics.median(s.rss_mb for s in tail)
    growth = rss_end - rss_mid
    limit = min(0.05 * rss_mid, 100.0)
    second = [s for s in samples if s.n >= total / 2]
    slope = float(np.polyfit([s.n for s in second], [s.rss_mb for s in second], 1)[0] * 1e4) if len(second) > 2 else 0.0
    marks = boundaries or samples
    b_mid = min(marks, key=lambda s: abs(s.n - total / 2))
    b_end = marks[-1]
    th_mid, th_end, fd_mid, fd_end = b_mid.threads, b_end.threads, b_mid.fds, b_end.fds
    reasons = []
    if growth > limit:
        reasons.append(f"RSS grew {growth:.1f} MB from mid-run (limit {limit:.1f} MB)")
    if th_end > th_mid:
        reasons.append(f"threads grew {th_mid} -> {th_end}")
    if fd_end > fd_mid:
        reasons.append(f"open files grew {fd_mid} -> {fd_end}")
    return SoakResult(
        backend=backend,
        predictions=total,
        seconds=samples[-1].t,
        rss_start_mb=samples[0].rss_mb,
        rss_mid_mb=rss_mid,
        rss_end_mb=rss_end,
        growth_mb=growth,
        limit_mb=limit,
        slope_mb_per_10k=slope,
        threads_mid=th_mid,
        threads_end=th_end,
        fds_mid=fd_mid,
        fds_end=fd_end,
        passed=not reasons,
        reasons=reasons,
        samples=samples,
        cycles=list(boundaries or []),
        **counts,
    )


# -------------------------------------------------------------------------------------------- data


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Varied images: JPEG of many sizes plus grayscale PNG, RGBA PNG, 16-bit TIFF and WebP."""
    import cv2

    from unideploy.testing import scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = int(rng.integers(40, 400)), int(rng.integers(40, 400))
        img = scene(rng, h, w)
        kind = i % 6
        if kind == 0:
            p, data = folder / f"{i:04d}_gray.png", cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif kind == 1:
            p, data = folder / f"{i:04d}_rgba.png", np.dstack([img, rng.integers(0, 256, (h, w), np.uint8)])
        elif kind == 2:
            p, data = folder / f"{i:04d}_deep.tif", img.astype(np.uint16) * 257
        elif kind == 3:
            p, data = folder / f"{i:04d}.webp", img
        else:
            p, data = folder / f"{i:04d}.jpg", img
        if not p.exists():
            cv2.imwrite(str(p), data)
        out.append(p)
    return out


def make_video(path: Path, frames: int, size: tuple[int, int] = (96, 128), fps: float = 25.0) -> Path:
    """A long MJPG video panning over a wide generated scene (every frame different)."""
    import cv2

    from unideploy.testing import scene

    if path.exists():
        cap = cv2.VideoCapture(str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        if n == frames:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    wide = scene(np.random.default_rng(1), h, w * 8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    span = wide.shape[1] - w
    for i in range(frames):
        x = (i * 3) % (2 * span)
        x = x if x < span else 2 * span - x
        frame = wide[:, x : x + w].copy()
        cv2.putText(frame, str(i), (2, h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        writer.write(frame)
    writer.release()
    return path


def build_model(folder: Path, imgsz: int, openvino: bool) -> dict[str, Path]:
    """A random-weight YOLOv8n at ``imgsz`` (ONNX, and OpenVINO IR when asked), built once and reused."""
    folder = folder.resolve()
    onnx = folder / "yolov8n.onnx"
    xmls = sorted((folder / "yolov8n_openvino_model").glob("*.xml"))
    if onnx.exists() and (xmls or not openvino):
        return {"onnxruntime": onnx, **({"openvino": xmls[0]} if xmls else {})}
    import subprocess

    # built in a child process, so that torch / Ultralytics never enter the process being measured
    code = (
        "import sys; from unideploy.testing import build_random_yolo; "
        f"build_random_yolo('yolov8n.yaml', {str(folder)!r}, {int(imgsz)}, openvino={bool(openvino)})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
    xmls = sorted((folder / "yolov8n_openvino_model").glob("*.xml"))
    return {"onnxruntime": onnx, **({"openvino": xmls[0]} if xmls else {})}


# --------------------------------------------------------------------------------------------- run


def leaky(fn: Callable, kb: int, store: list) -> Callable:
    """``fn`` that also keeps ``kb`` KB of fresh (written, hence resident) memory per call: a leaking stub."""
    block = bytes(range(256)) * 4

    def wrapped(*a: Any, **k: Any) -> Any:
        store.append(block * kb)
        return fn(*a, **k)

    return wrapped


def soak(
    model: str | Path,
    backend: str,
    images: list[Path],
    video: Path | None,
    n: int,
    *,
    leak_kb: int = 0,
    samples: int = 100,
    progress: bool = True,
    **load_kwargs: Any,
) -> SoakResult:
    """Run ``n`` predictions on one backend (see the module docstring) and judge the resource samples.

    Example:
        >>> r = soak("m.onnx", "onnxruntime", make_images(Path("im"), 16), make_video(Path("v.avi"), 300), 3000)  # doctest: +SKIP
        >>> r.passed  # doctest: +SKIP
    """
    import unideploy

    every = max(1, n // samples)
    out: list[Sample] = []
    done = errors = video_frames = images_done = 0
    leaked: list[bytes] = []
    boundaries: list[Sample] = []
    video_frames_per_cycle = 0
    if video is not None:
        import cv2

        cap = cv2.VideoCapture(str(video))
        video_frames_per_cycle = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
    t0 = time.perf_counter()
    next_sample = 0

    def tick(k: int = 1, ok: bool = True, from_video: bool = False) -> bool:
        nonlocal done, next_sample, errors, video_frames, images_done
        done += k
        errors += 0 if ok else k
        if from_video:
            video_frames += k
        else:
            images_done += k
        if done >= next_sample:
            gc.collect()
            out.append(Sample(done, time.perf_counter() - t0, rss_mb(), os_threads(), open_fds()))
            next_sample = done + every
            if progress and (sys.stderr.isatty() or len(out) % 10 == 1):
                print(
                    f"{chr(13) if sys.stderr.isatty() else ''}  {backend}: {done:,}/{n:,} predictions, "
                    f"RSS {out[-1].rss_mb:.0f} MB, {out[-1].threads} threads, {out[-1].fds} files",
                    end="" if sys.stderr.isatty() else "\n",
                    file=sys.stderr,
                    flush=True,
                )
        return done < n

    with unideploy.load(model, backend=backend, **load_kwargs) as pred:
        if leak_kb:
            pred.adapter.postprocess = leaky(pred.adapter.postprocess, leak_kb, leaked)
        tick(0)
        running = True
        while running:
            # 1. images, about as many predictions as the video has frames: a pipelined stream over the
            #    folder, then single paths and lists of 8 through __call__, repeated
            start = done
            while running and done - start < max(len(images), video_frames_per_cycle):
                with closing(pred.stream(images)) as stream:
                    for o in stream:
                        if not tick(ok=o.ok):
                            running = False
                            break
                for i in range(0, len(images), 8):
                    if not running:
                        break
                    if i % 16 == 0:
                        pred(images[i])
                        running = tick()
                    else:
                        running = tick(len(pred(images[i : i + 8])))
            # 2. the long video, pipelined
            if video is not None and running:
                with closing(pred.stream(video)) as stream:
                    for o in stream:
                        if not tick(ok=o.ok, from_video=True):
                            running = False
                            break
            # threads and open files are compared between cycles, when no stream is running
            gc.collect()
            boundaries.append(Sample(done, time.perf_counter() - t0, rss_mb(), os_threads(), open_fds()))
    gc.collect()
    out.append(Sample(done, time.perf_counter() - t0, rss_mb(), os_threads(), open_fds()))
    if progress:
        print(file=sys.stderr)
    return judge(out, backend, boundaries=boundaries, video_frames=video_frames, images=images_done, errors=errors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="onnxruntime,openvino", help="comma-separated (default onnxruntime,openvino)")
    ap.add_argument("--n", type=int, default=100_000, help="predictions per backend (default 100,000)")
    ap.add_argument("--video-frames", type=int, default=10_000, help="frames of the generated video (default 10,000)")
    ap.add_argument("--images", type=int, default=96, help="generated images (default 96)")
    ap.add_argument("--imgsz", type=int, default=64, help="input size of the generated model (default 64)")
    ap.add_argument("--model", default=None, help="use this model file instead (one backend)")
    ap.add_argument("--work", default="out/soak", help="folder for the model, images and video (default out/soak)")
    ap.add_argument("--short", action="store_true", help="CI size: 3,000 predictions, 300 video frames, 24 images")
    ap.add_argument("--leak-kb", type=int, default=0, help="make the run leak this many KB per prediction (self-test)")
    ap.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    ap.add_argument("--json", default=None, help="report path (default WORK/soak.json)")
    args = ap.parse_args(argv)
    if args.short:
        args.n, args.video_frames, args.images = min(args.n, 3000), min(args.video_frames, 300), min(args.images, 24)
    work = Path(args.work)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    from unideploy.runtime.backends.registry import get_backend

    backends = [b for b in backends if get_backend(b).available()]
    models = (
        {b: Path(args.model) for b in backends}
        if args.model
        else build_model(work / f"model{args.imgsz}", args.imgsz, openvino="openvino" in backends)
    )
    images = make_images(work / "images", args.images)
    video = make_video(work / f"video{args.video_frames}.avi", args.video_frames) if args.video_frames else None
    results = []
    for b in backends:
        opts: dict[str, Any] = {"threads": args.threads} if args.threads else {}
        if b == "onnxruntime":
            opts["spin"] = False
        results.append(soak(models[b], b, images, video, args.n, leak_kb=args.leak_kb, conf=0.25, **opts))
    print(
        f"\nsoak: {args.n:,} predictions per backend; model {Path(str(models[backends[0]])).name} at {args.imgsz}px; "
        f"{len(images)} images, video of {args.video_frames:,} frames{f'; LEAKING {args.leak_kb} KB per prediction' if args.leak_kb else ''}\n"
    )
    print(HEADER)
    for r in results:
        print(r.row())
    report = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "args": vars(args),
        "results": [asdict(r) for r in results],
    }
    path = Path(args.json) if args.json else work / "soak.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
