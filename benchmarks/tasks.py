"""Segmentation, pose and OBB: unideploy vs Ultralytics predict, end to end and the mask postprocess alone.

1. End to end: for each task, the bundled demo model on its bundled validation images (or, with ``--random``,
   random-weight YOLOv8n-{seg,pose,obb} made to fire by ``unideploy.testing`` on generated scenes), as ONNX and as
   OpenVINO IR (``unideploy export``); every run is a fresh process (``vs_ultralytics.py``'s child:
   cold start, steady images/s, peak RSS), Ultralytics and unideploy interleaved, ``--repeats`` times; medians
   and ratios (unideploy / Ultralytics).
2. Mask postprocess on the same raw outputs of the -seg ONNX (one ONNX Runtime run per image, kept): unideploy's
   adapter postprocess (NMS + masks at the image size) vs Ultralytics' ``SegmentationPredictor.postprocess``
   with ``retina_masks=True`` (masks at the image size, ``process_mask_native``) and with the default
   (``process_mask``, masks at the letterboxed input size, the cheaper one), per image, medians of 5 passes;
   and unideploy's ``retina_masks=False`` (the default path, its masks mapped onto the image) vs Ultralytics'
   default alone and followed by that mapping (``scale_masks`` > 0.5, as its plotting does).

    python benchmarks/tasks.py                                  # the demo models, 3 repeats
    python benchmarks/tasks.py --random --imgsz 640 --images 60 --repeats 5
    python benchmarks/tasks.py --masks-only --out benchmarks/results/tasks_masks.json   # part 2 alone
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_ultralytics import CHILD  # noqa: E402

TASKS = {"seg": "segment", "pose": "pose", "obb": "obb"}
SIZES = [(480, 640), (640, 480), (360, 360), (720, 1280), (300, 200), (1080, 810)]


def run_child(tool: str, model: str, images: str, task: str) -> dict:
    code = CHILD.replace('YOLO(model, task="detect")', f'YOLO(model, task="{task}")')
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", code, repr(t), tool, model, images], capture_output=True, text=True,
                          env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{tool} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def end_to_end(models: dict, image_dirs: dict, repeats: int) -> dict:
    out = {}
    for t, files in models.items():
        for fmt, path in files.items():
            tools = {"ultralytics": str(path if fmt == "onnx" else path.parent),
                     f"unideploy:{'onnxruntime' if fmt == 'onnx' else 'openvino'}": str(path)}
            runs: dict[str, list] = {k: [] for k in tools}
            for _ in range(repeats):
                for tool, model in tools.items():
                    runs[tool].append(run_child(tool, model, str(image_dirs[t]), TASKS[t]))
            med = {tool: {k: round(statistics.median(r[k] for r in rs), 3) for k in ("ips", "cold_s", "rss_mb")}
                   for tool, rs in runs.items()}
            ours, ref = med[list(tools)[1]], med["ultralytics"]
            out[f"{t}/{fmt}"] = {"medians": med, "runs": runs,
                                 "ratio_images_per_s": round(ours["ips"] / ref["ips"], 2),
                                 "ratio_cold_start": round(ours["cold_s"] / ref["cold_s"], 2),
                                 "ratio_peak_rss": round(ours["rss_mb"] / ref["rss_mb"], 2)}
            print(f"{t}/{fmt}: unideploy {ours['ips']:.1f} img/s vs Ultralytics {ref['ips']:.1f} "
                  f"({out[f'{t}/{fmt}']['ratio_images_per_s']}x)", flush=True)
    return out


def default_mask_parity(ours: list, theirs: list) -> dict:
    """unideploy's ``retina_masks=False`` masks vs Ultralytics' default ones mapped onto the image (``scale_masks``,
    > 0.5) on the same outputs: instances paired by class, box (1 px) and score (1e-3), then mask IoU (two empty
    masks count as equal)."""
    import numpy as np
    from ultralytics.utils import ops

    from unideploy.core.ops.masks import mask_iou

    ious, unmatched, count_diff = [], 0, 0
    for (a,), (r,) in zip(ours, theirs):
        count_diff += abs(len(a) - len(r))
        if r.masks is None or not len(a):
            continue
        ref = (ops.scale_masks(r.masks.data[None].float(), r.orig_shape)[0] > 0.5).numpy()
        rb, rc, rk = r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy()
        used = np.zeros(len(rb), bool)
        for i in range(len(a)):
            ok = np.flatnonzero(~used & (np.abs(rb - a.xyxy[i]).max(1) <= 1) & (rk == a.class_id[i])
                                & (np.abs(rc - a.confidence[i]) <= 1e-3))
            if not ok.size:
                unmatched += 1
                continue
            m = a.masks.data[i]
            best = [1.0 if not (m.any() or ref[j].any()) else float(mask_iou(m[None], ref[j][None])[0, 0]) for j in ok]
            j = int(ok[int(np.argmax(best))])
            used[j] = True
            ious.append(max(best))
    v = np.array(ious) if ious else np.zeros(1)
    return {"matched": len(ious), "unmatched": unmatched, "instance_count_difference": count_diff,
            "identical_masks": int((v == 1.0).sum()), "mask_iou_mean": round(float(v.mean()), 5),
            "mask_iou_p5": round(float(np.quantile(v, 0.05)), 5), "mask_iou_min": round(float(v.min()), 5)}


def mask_postprocess(onnx_path: Path, files: list[Path], imgsz: int, passes: int = 5) -> dict:
    """Per-image postprocess milliseconds of both on the same raw outputs (see the module docstring)."""
    import numpy as np
    import torch
    from ultralytics.models.yolo.segment import SegmentationPredictor

    import unideploy
    from unideploy.core.sources import read_image

    with unideploy.load(onnx_path, backend="onnxruntime", conf=0.25, iou=0.7) as pred:
        cases = []
        for f in files:
            img = read_image(f)
            x, info = pred.adapter.preprocess(img)
            outs = [np.asarray(o) for o in pred.infer(x[None])]
            outs = sorted(outs, key=lambda o: o.ndim)  # (1, C, N) then the (1, 32, h, w) prototypes
            cases.append((img, x, info, outs))
        opts = pred.postprocess_options()
        opts_default = pred.postprocess_options(retina_masks=False)

        def ours(o_: object = opts) -> list:
            return [pred.adapter.postprocess(o, [info], o_) for _, _, info, o in cases]

        ul = {}
        for retina in (True, False):
            p = SegmentationPredictor(overrides=dict(model=str(onnx_path), imgsz=imgsz, conf=0.25, iou=0.7,
                                                     retina_masks=retina, verbose=False, device="cpu"))
            p.setup_model(str(onnx_path))
            ul[retina] = p

        def ultra(retina: bool) -> list:
            p = ul[retina]
            res = []
            for (img, x, _, o), f in zip(cases, files):
                p.batch = ([str(f)], [img], [""])
                t = torch.from_numpy(np.ascontiguousarray(x[None]))
                res.append(p.postprocess([torch.from_numpy(o[0]), torch.from_numpy(o[1])], t, [img]))
            return res

        def ultra_mapped() -> list:  # the default path's masks brought onto the image, as its plotting does
            from ultralytics.utils import ops

            res = ultra(False)
            for r in res:
                if r[0].masks is not None:
                    ops.scale_masks(r[0].masks.data[None].float(), r[0].orig_shape)[0] > 0.5
            return res

        times: dict[str, list] = {"unideploy": [], "unideploy_default": [], "ultralytics_retina": [],
                                  "ultralytics_default": [], "ultralytics_default_mapped": []}
        for _ in range(passes):
            for name, fn in (("unideploy", ours), ("unideploy_default", lambda: ours(opts_default)),
                             ("ultralytics_retina", lambda: ultra(True)),
                             ("ultralytics_default", lambda: ultra(False)),
                             ("ultralytics_default_mapped", ultra_mapped)):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) / len(cases) * 1e3)
        n_inst = sum(len(r[0]) for r in ours())
        parity = default_mask_parity(ours(opts_default), ultra(False))
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return {"ms_per_image": med, "runs_ms": times, "instances": n_inst, "images": len(cases),
            "default_mask_parity": parity,
            "ratio_vs_retina": round(med["unideploy"] / med["ultralytics_retina"], 3),
            "ratio_vs_default": round(med["unideploy"] / med["ultralytics_default"], 3),
            "ratio_default_vs_default": round(med["unideploy_default"] / med["ultralytics_default"], 3),
            "ratio_default_vs_default_mapped": round(med["unideploy_default"] / med["ultralytics_default_mapped"], 3),
            "ratio_default_vs_retina": round(med["unideploy_default"] / med["unideploy"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", default="seg,pose,obb")
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--masks-only", action="store_true", help="only part 2 (the -seg mask postprocess), no end to end")
    ap.add_argument("--random", action="store_true",
                    help="random-weight yolov8n-* at --imgsz on generated scenes instead of the bundled demo models")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "tasks.json"))
    a = ap.parse_args()
    if a.masks_only:  # the -seg ONNX alone
        a.tasks, a.no_openvino = "seg", True
    import unideploy
    from unideploy.apps.demo_tasks import TASK_MODELS
    from unideploy.testing import build_random_yolo, write_scenes

    work = Path(tempfile.mkdtemp(prefix="bench_tasks_"))
    tasks = a.tasks.split(",")
    if a.random:  # random-weight yolov8n-*: many (up to 300) instances per image, every image the same scenes
        sizes = [SIZES[i % len(SIZES)] for i in range(a.images)]
        write_scenes(work / "images", sizes, seed=5)
        models = {t: build_random_yolo(f"yolov8n-{t}.yaml", work / t, a.imgsz, openvino=not a.no_openvino)
                  for t in tasks}
        image_dirs = {t: work / "images" for t in tasks}
        source = {"models": "random yolov8n-{seg,pose,obb}", "imgsz": a.imgsz, "image_sizes_hw": sorted(set(sizes))}
    else:  # the bundled demo models on their bundled validation images (real instance counts)
        models, image_dirs = {}, {}
        for t in tasks:
            onnx_path, data = TASK_MODELS[t]
            models[t] = {"onnx": onnx_path}
            if not a.no_openvino:
                models[t]["openvino"] = Path(unideploy.export(onnx_path, to="openvino", out=work / f"{t}_openvino_model"))
            image_dirs[t] = data.parent / "images"
        source = {"models": "bundled shapes_yolov8_{seg,pose,obb}.onnx (imgsz 160)",
                  "images": "bundled val_{seg,pose,obb}/images (40 each, 240-640 px)"}
    load = os.getloadavg()
    report = {**source, "repeats": a.repeats, "load_average_start": load}
    if "seg" in models:
        files = sorted(image_dirs["seg"].glob("*.jpg"))
        imgsz = a.imgsz if a.random else unideploy.read_spec(models["seg"]["onnx"]).imgsz[0]
        report["mask_postprocess"] = mask_postprocess(models["seg"]["onnx"], files, imgsz)
        print(f"mask postprocess ms/img: {report['mask_postprocess']['ms_per_image']}", flush=True)
    if not a.masks_only:
        report["end_to_end"] = end_to_end(models, image_dirs, a.repeats)
    import onnxruntime
    import ultralytics

    report["load_average_end"] = os.getloadavg()
    report["machine"] = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                         "python": platform.python_version()}
    report["versions"] = {"ultralytics": ultralytics.__version__, "onnxruntime": onnxruntime.__version__}
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
