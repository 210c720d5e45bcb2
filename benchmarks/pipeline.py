"""End-to-end throughput of the pipelined predictor vs pure inference, per backend, side by side.

For each backend (ONNX Runtime, OpenVINO) and each number of inference runs in flight, measured in one
process, interleaved, repeated (the table shows medians over the repeats):

* pure     - inference only, on a resident preprocessed batch (``Session.run`` loop for 1 request,
             ``AsyncRunner`` for more), images/s = batch x runs / wall;
* serial   - decode, preprocess, infer, postprocess one batch after another in one thread (no overlap);
* pipeline - ``Predictor.stream`` over the same images (decode/preprocess threads, runs in flight,
             postprocess thread);
* ratio    - pipeline / pure at the same batch size and runs in flight (the target is >= 0.90);
* CPU ms/img - CPU time of this process (all threads) per image, pure vs pipeline: on a shared machine the
             wall-clock ratio depends on how the scheduler shares the cores (a process with more runnable
             threads gets a larger share), while CPU per image does not. On an otherwise idle machine whose
             cores pure inference already saturates, pipeline/pure is bounded by this CPU ratio.

    python benchmarks/pipeline.py                          # YOLOv8n 320 (random weights) built here, 64 images
    python benchmarks/pipeline.py --imgsz 640 --repeats 7  # a 640 export
    python benchmarks/pipeline.py --model m.onnx --ov m_openvino_model/m.xml --images DIR --json out.json

Numbers depend on the machine and on what else runs on it: the JSON records the CPU, the load average
before and after, and the library versions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_models(imgsz: int, folder: Path) -> tuple[Path, Path | None]:
    """YOLOv8n with random (but varied-output) weights, exported by Ultralytics to ONNX and OpenVINO."""
    onnx_path = folder / f"yolov8n_{imgsz}" / "yolov8n.onnx"
    ov_xml = folder / f"yolov8n_{imgsz}" / "yolov8n_openvino_model" / "yolov8n.xml"
    if not onnx_path.is_file() or not ov_xml.is_file():
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_CONFIG_DIR", str(folder / "yolo_cfg"))
        from unideploy.testing import build_random_yolo

        out = build_random_yolo("yolov8n.yaml", onnx_path.parent, imgsz, openvino=True)
        return out["onnx"], out.get("openvino")
    return onnx_path, ov_xml


def make_images(folder: Path, n: int) -> Path:
    from unideploy.testing import write_scenes

    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) < n:
        write_scenes(folder, [(480, 640)] * n, seed=11, quality=90)
    return folder


def one_round(pred, images, x, requests: int, loop: int, warmup: int) -> dict[str, float]:
    from unideploy.tools.bench import end_to_end, end_to_end_serial, pure_inference

    mode = "sync" if requests == 1 else "async"
    pure = pure_inference(pred.session, x, warmup=warmup, loop=loop, mode=mode, requests=requests)
    pipe = end_to_end(pred, images, requests=requests, warmup_items=4)
    out = {"pure": pure.throughput, "pipeline": pipe.images_per_s, "pure_median_ms": pure.stats.median_ms,
           "pure_cpu_ms": pure.cpu_s / (pure.batch * pure.runs) * 1e3, "pipeline_cpu_ms": pipe.cpu_s / max(1, pipe.images) * 1e3,
           "stages_ms": {k: (sum(v) / len(v) * 1e3 if v else None) for k, v in pipe.stages.items()}}
    if requests == 1:
        out["serial"] = end_to_end_serial(pred, images, warmup_items=4).images_per_s
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="ONNX model (default: YOLOv8n with random weights, built here)")
    ap.add_argument("--ov", help="OpenVINO .xml of the same model (default: built with --model's default)")
    ap.add_argument("--imgsz", type=int, default=320, help="input size of the built model (default 320)")
    ap.add_argument("--images", help="image folder (default: 64 synthetic 640x480 JPEG scenes)")
    ap.add_argument("--n", type=int, default=64, help="synthetic images to write (default 64)")
    ap.add_argument("--batch", type=int, default=1, help="batch size (default 1; the built models have a fixed batch of 1)")
    ap.add_argument("--requests", default="1,2", help="runs in flight to compare (default 1,2)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are reported (default 5)")
    ap.add_argument("--loop", type=int, default=60, help="timed runs per pure-inference measurement (default 60)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--ort-spin", choices=("on", "off", "default"), default="off",
                    help="ONNX Runtime intra-op spinning (default off: busy-waiting threads starve the pipeline)")
    ap.add_argument("--ov-hint", choices=("latency", "throughput"), default="latency",
                    help="OpenVINO performance hint (default latency, the backend's default)")
    ap.add_argument("--work", default=str(REPO / "out" / "bench_pipeline"), help="where built models/images go")
    ap.add_argument("--json", default=None, help="write the results as JSON (default: <work>/pipeline.json)")
    args = ap.parse_args()

    import unideploy
    from unideploy.tools.bench import input_batch, library_versions, machine_info
    from unideploy.core.sources import Source, read_image

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        onnx_path, ov_path = Path(args.model), (Path(args.ov) if args.ov else None)
    else:
        onnx_path, ov_path = build_models(args.imgsz, work)
    images = Path(args.images) if args.images else make_images(work / "images", args.n)
    source = Source(images)
    sample = read_image(source.entries[0])
    reqs = [int(r) for r in args.requests.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    models = {"onnxruntime": onnx_path, "openvino": ov_path or onnx_path}
    machine_before = machine_info()

    preds, inputs = {}, {}
    for b in backends:
        opts = {}
        if b == "onnxruntime" and args.ort_spin != "default":
            opts["spin"] = args.ort_spin == "on"
        if b == "openvino":
            opts["hint"] = args.ov_hint
        preds[b] = unideploy.load(models[b], backend=b, batch=args.batch if args.batch > 1 else None, **opts)
        inputs[b] = input_batch(preds[b], args.batch, sample)
    rounds: dict[str, dict[int, list[dict]]] = {b: {r: [] for r in reqs} for b in backends}
    try:
        for rep in range(args.repeats):
            for b in backends:
                for r in reqs:
                    res = one_round(preds[b], source, inputs[b], r, args.loop, args.warmup)
                    rounds[b][r].append(res)
                    print(f"repeat {rep + 1}/{args.repeats} {b:12s} requests={r}: pure {res['pure']:6.1f}/s  "
                          f"pipeline {res['pipeline']:6.1f}/s" + (f"  serial {res['serial']:6.1f}/s" if "serial" in res else ""),
                          file=sys.stderr, flush=True)
    finally:
        for p in preds.values():
            p.close()
    machine_after = machine_info()

    med = statistics.median
    table, summary = [], {}
    for b in backends:
        summary[b] = {}
        for r in reqs:
            rs = rounds[b][r]
            pure, pipe = med(x["pure"] for x in rs), med(x["pipeline"] for x in rs)
            ratios = [x["pipeline"] / x["pure"] for x in rs]
            serial = med(x["serial"] for x in rs) if "serial" in rs[0] else None
            stages = {k: med(x["stages_ms"][k] for x in rs if x["stages_ms"][k] is not None) for k in rs[0]["stages_ms"]}
            cpu_pure, cpu_pipe = med(x["pure_cpu_ms"] for x in rs), med(x["pipeline_cpu_ms"] for x in rs)
            summary[b][r] = {"pure_ips": pure, "pipeline_ips": pipe, "serial_ips": serial, "ratio_median": med(ratios),
                             "pure_cpu_ms_per_image": cpu_pure, "pipeline_cpu_ms_per_image": cpu_pipe,
                             "ratio_min": min(ratios), "ratio_max": max(ratios), "stages_ms": stages, "rounds": rs}
            table.append([b, r, f"{pure:.1f}", f"{pipe:.1f}", "-" if serial is None else f"{serial:.1f}",
                          f"{med(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})", f"{cpu_pure:.1f}", f"{cpu_pipe:.1f}",
                          f"{cpu_pure / cpu_pipe:.2f}"])
        best_pure = max(summary[b][r]["pure_ips"] for r in reqs)
        best_pipe = max(summary[b][r]["pipeline_ips"] for r in reqs)
        summary[b]["best"] = {"pure_ips": best_pure, "pipeline_ips": best_pipe, "ratio": best_pipe / best_pure}

    from unideploy.tools.bench import format_table

    print(f"\nmodel {onnx_path.name} ({'built, random weights' if not args.model else 'given'}), batch {args.batch}, "
          f"{len(source)} images {sample.shape[1]}x{sample.shape[0]}, {args.repeats} repeats (medians), "
          f"ORT spin {args.ort_spin}, OpenVINO hint {args.ov_hint}")
    print(f"machine: {machine_before['cpu']}, {machine_before['logical_cores']} cores, load average "
          f"{machine_before['load_average']} before / {machine_after['load_average']} after")
    print(format_table(["backend", "in flight", "pure img/s", "pipeline img/s", "serial img/s", "pipeline/pure (min-max)",
                        "pure CPU ms/img", "pipeline CPU ms/img", "CPU pure/pipeline"], table))
    for b in backends:
        s = summary[b]["best"]
        print(f"{b}: best pipeline {s['pipeline_ips']:.1f} img/s vs best pure {s['pure_ips']:.1f} inf/s -> {s['ratio']:.2f}")
    out = Path(args.json) if args.json else work / "pipeline.json"
    report = {"settings": vars(args), "model": str(onnx_path), "openvino_model": str(models.get("openvino")),
              "images": len(source), "machine_before": machine_before, "machine_after": machine_after,
              "versions": library_versions(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "results": {b: {str(k): v for k, v in d.items()} for b, d in summary.items()}}
    out.write_text(json.dumps(report, indent=1))
    print(f"saved {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
