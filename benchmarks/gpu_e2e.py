"""GPU end to end: JPEG files -> detections, against Ultralytics and against the model's own forward ceiling.

On one CUDA GPU and one folder of JPEGs (default: 2,000 generated scenes of mixed sizes 640x480 .. 1920x1080):

1. Ultralytics ``YOLO(model).predict(folder, stream=True, half=True, batch=B)`` (decodes and letterboxes on
   the CPU, one image at a time);
2. unideploy :class:`~unideploy.runtime.gpu.GpuPredictor` (nvJPEG batch decode, GPU letterbox, CUDA-graph fp16
   forward, batched GPU NMS, reading/decoding overlapped with inference);
3. the forward ceiling: the same fp16 model, CUDA graph replayed at batch B on a tensor already on the GPU.

Prints images/s for each and the ratios (end to end / ceiling, end to end / Ultralytics) and writes JSON.
Each measurement runs ``--repeats`` times after a warm-up pass; medians are reported.

    python benchmarks/gpu_e2e.py                                # yolov8n.yaml (random weights), batch 64, 640
    python benchmarks/gpu_e2e.py --model yolov8n.pt --images /data/coco/val2017 --batch 64 --out gpu_e2e.json

Needs a CUDA GPU, torch==2.14.1 and torchvision==0.29.1 (CUDA builds) and ultralytics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIZES = [(480, 640), (720, 1280), (1080, 1920), (600, 800), (768, 1024), (640, 480), (1080, 1440), (540, 960)]


def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` cluttered scenes (the test suite's generator) as JPEGs of mixed sizes from 640x480 to 1920x1080."""
    import cv2
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import scene  # the same generator the tests use

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        p = folder / f"img{i:05d}_{w}x{h}.jpg"
        if not p.exists():
            cv2.imwrite(str(p), scene(rng, h, w), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def build_model(cfg: str, out: Path, imgsz: int) -> Path:
    """An Ultralytics checkpoint: the given .pt, or a .yaml built with random weights (made to give varied
    scores, so NMS has real work) and saved the Ultralytics way."""
    if cfg.endswith(".pt"):
        return Path(cfg)
    import torch
    from ultralytics import YOLO

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import randomise

    torch.manual_seed(0)
    m = YOLO(cfg)
    randomise(m.model, imgsz)
    m.ckpt = {"train_args": {"imgsz": imgsz, "task": "detect"}}
    path = out / (Path(cfg).stem + ".pt")
    m.save(str(path))
    return path


def timed(fn, repeats: int) -> list[float]:
    import torch

    fn()  # warm-up (CUDA graphs, cudnn autotune, nvJPEG handles)
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov8n.yaml", help=".pt checkpoint, or a .yaml (random weights)")
    ap.add_argument("--images", default=None, help="folder of JPEGs (default: generate --count scenes)")
    ap.add_argument("--count", type=int, default=2000, help="images to generate when --images is not given")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--skip-ultralytics", action="store_true")
    ap.add_argument("--out", default="gpu_e2e.json")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_e2e: no CUDA device here; this benchmark needs one (nothing measured)", file=sys.stderr)
        return 2
    os.environ.setdefault("YOLO_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="gpu_e2e_"))
    images = sorted(Path(args.images).glob("*.jp*g")) if args.images else make_images(work / "images", args.count)
    model = build_model(args.model, work, args.imgsz)
    n, b = len(images), args.batch
    gpu = torch.cuda.get_device_name(torch.device(args.device))
    results: dict[str, float] = {}

    # 3. forward ceiling: fp16, CUDA graph, batch B, input resident on the GPU
    from unideploy.runtime.backends.torch import TorchBackend

    with TorchBackend.open(model, args.device, precision="fp16", cuda_graph=True, imgsz=args.imgsz) as s:
        x = torch.rand(b, 3, args.imgsz, args.imgsz, device=args.device, dtype=torch.float16)
        iters = max(1, n // b)
        t = timed(lambda: [s.run_tensor(x, clone=False) for _ in range(iters)], args.repeats)
        results["forward_ceiling"] = iters * b / statistics.median(t)

    # 2. unideploy end to end
    from unideploy.runtime.gpu import GpuPredictor

    with GpuPredictor(model, device=args.device, batch=b, precision="fp16", imgsz=args.imgsz, conf=0.25) as p:
        counts: list[int] = []

        def run_e2e() -> None:
            counts.clear()
            counts.extend(len(o.result) for o in p.stream([str(i) for i in images]) if o.ok)

        t = timed(run_e2e, args.repeats)
        results["unideploy_e2e"] = n / statistics.median(t)
        results["detections_per_image"] = sum(counts) / max(len(counts), 1)
        results["e2e_stage_means_ms"] = {k: v * 1e3 for k, v in p.times.summary().items()}  # type: ignore[assignment]

    # 1. Ultralytics predict
    if not args.skip_ultralytics:
        from ultralytics import YOLO

        y = YOLO(str(model))

        def run_ul() -> None:
            for _ in y.predict(str(images[0].parent), stream=True, half=True, batch=b, imgsz=args.imgsz, conf=0.25,
                               device=args.device, verbose=False):
                pass

        t = timed(run_ul, max(1, args.repeats - 1))
        results["ultralytics_predict"] = n / statistics.median(t)

    rows = [("Ultralytics predict (stream, half, batch)", results.get("ultralytics_predict")),
            ("unideploy GPU end to end", results["unideploy_e2e"]),
            ("forward ceiling (fp16, CUDA graph, resident input)", results["forward_ceiling"])]
    print(f"\nGPU: {gpu}; model {Path(args.model).name}; {n} JPEGs; batch {b}; imgsz {args.imgsz}\n")
    print(f"| {'pipeline':52s} | images/s |")
    print(f"| {'-' * 52} | -------: |")
    for name, v in rows:
        print(f"| {name:52s} | {v:8.0f} |" if v else f"| {name:52s} |      n/a |")
    ratio_ceiling = results["unideploy_e2e"] / results["forward_ceiling"]
    print(f"\nend to end / forward ceiling: {ratio_ceiling:.1%} (target >= 80%)")
    if results.get("ultralytics_predict"):
        print(f"end to end / Ultralytics:     {results['unideploy_e2e'] / results['ultralytics_predict']:.1f}x (target >= 30x)")
    report = {"gpu": gpu, "model": str(args.model), "images": n, "batch": b, "imgsz": args.imgsz,
              "torch": torch.__version__, "python": platform.python_version(), "results": results,
              "ratio_e2e_to_ceiling": ratio_ceiling}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
