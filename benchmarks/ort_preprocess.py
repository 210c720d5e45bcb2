"""Does moving the preprocessing into the ONNX graph beat numpy on this CPU (ONNX Runtime)? Measured side by side.

Issue #19 item 5. Two ways to run a float NCHW detector on the letterboxed uint8 BGR images of a stream:

* numpy  - the default path: ``Adapter.to_batch`` (BGR -> RGB, HWC -> CHW, uint8 -> float32, / 255 into a reused
           buffer), then ``InferenceSession.run`` on the float model;
* graph  - a graph pass (built once, cached as ``<stem>_u8nhwc.onnx``) prepends ``Cast(uint8 -> float)``,
           ``Slice`` (BGR -> RGB, step -1 on the channel axis), ``Transpose`` (NHWC -> NCHW) and ``Div`` (255) to the
           model, which then takes the uint8 NHWC batch the host copies with no float work (``to_batch`` of an
           ``in_model`` spec);

both timed per batch (host preparation + run, and each part; wall and process CPU time, the latter not inflated
by other load on a shared machine), alternated ``--repeats`` times in one process (medians), on the demo model (320 px) and, with ``--imgsz 640``, a YOLOv8n with random weights built here. The
outputs of the two are compared (max abs difference) so a win cannot come from computing something else.

    python benchmarks/ort_preprocess.py                  # demo model, batch 1, writes the JSON
    python benchmarks/ort_preprocess.py --imgsz 640      # adds YOLOv8n-640 (Ultralytics export, random weights)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "src" / "unideploy" / "assets" / "demo" / "shapes_yolov8.onnx"


def prepend_preprocessing(src: Path, dst: Path, rgb: bool = True, scale: float = 1 / 255) -> Path:
    """``src`` with Cast/Slice/Transpose/Div nodes in front of its first input: uint8 NHWC BGR in (cached at ``dst``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    m = onnx.load(str(src))
    g = m.graph
    inp = g.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in inp.type.tensor_type.shape.dim]
    n, c, h, w = dims
    name = inp.name
    new_in = helper.make_tensor_value_info(name + "_u8", TensorProto.UINT8, [n, h, w, c])
    nodes = [helper.make_node("Cast", [new_in.name], ["pp_f"], to=TensorProto.FLOAT)]
    x = "pp_f"
    if rgb:
        g.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
                              (("pp_start", [-1]), ("pp_end", [-(2**62)]), ("pp_axes", [3]), ("pp_step", [-1]))])
        nodes.append(helper.make_node("Slice", [x, "pp_start", "pp_end", "pp_axes", "pp_step"], ["pp_rgb"]))
        x = "pp_rgb"
    nodes.append(helper.make_node("Transpose", [x], ["pp_nchw"], perm=[0, 3, 1, 2]))
    g.initializer.append(numpy_helper.from_array(np.array(1 / scale, np.float32), "pp_div"))
    nodes.append(helper.make_node("Div", ["pp_nchw", "pp_div"], [name]))
    del g.input[0]
    g.input.insert(0, new_in)
    for k, node in enumerate(nodes):
        g.node.insert(k, node)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def timed_batches(fn, batches: list, cpu: list | None = None) -> float:
    """Wall seconds per image of ``fn(batch)`` over one pass through ``batches``; appends the process CPU seconds
    per image (all threads: ONNX Runtime's intra-op pool included) to ``cpu``, which other load does not inflate."""
    n = sum(len(b) for b in batches)
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        fn(b)
    if cpu is not None:
        cpu.append((time.process_time() - c0) / n)
    return (time.perf_counter() - t0) / n


def measure(model: Path, batch: int, images: list[np.ndarray], repeats: int, threads: int | None) -> dict:
    import onnxruntime as ort

    import unideploy
    with unideploy.load(model, backend="onnxruntime") as pred:
        spec, adapter = pred.spec, pred.adapter
        resized = [pred.prepare(im)[0] for im in images]
    fused_path = prepend_preprocessing(model, model.with_name(model.stem + "_u8nhwc.onnx"), spec.channel_order == "rgb",
                                       spec.scale)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    plain = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(str(fused_path), so, providers=["CPUExecutionProvider"])
    fixed = plain.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed != batch:
        return {"batch": batch, "skipped": f"the model's batch is fixed at {fixed}"}
    batches = [resized[i:i + batch] for i in range(0, len(resized) - batch + 1, batch)]
    name_p, name_f = plain.get_inputs()[0].name, fused.get_inputs()[0].name
    buf: list = [None]

    def host_numpy(b):
        buf[0] = adapter.to_batch(b, out=buf[0])
        return buf[0]

    def host_u8(b):  # what Adapter.to_batch does for an ``in_model`` spec: one copy of the uint8 images
        return np.stack(b)

    xp, xf = host_numpy(batches[0]).copy(), host_u8(batches[0])
    diff = float(max(np.abs(a - b).max() for a, b in zip(plain.run(None, {name_p: xp}), fused.run(None, {name_f: xf}))))
    pre_p = [host_numpy(b).copy() for b in batches]
    pre_f = [host_u8(b) for b in batches]
    res: dict[str, list[float]] = {k: [] for k in ("numpy_total", "graph_total", "numpy_host", "graph_host",
                                                   "numpy_run", "graph_run", "numpy_total_cpu", "graph_total_cpu")}
    for b in batches[:2]:  # warm-up
        plain.run(None, {name_p: host_numpy(b)})
        fused.run(None, {name_f: host_u8(b)})
    for _ in range(repeats):
        res["numpy_total"].append(timed_batches(lambda b: plain.run(None, {name_p: host_numpy(b)}), batches,
                                                res["numpy_total_cpu"]))
        res["graph_total"].append(timed_batches(lambda b: fused.run(None, {name_f: host_u8(b)}), batches,
                                                res["graph_total_cpu"]))
        res["numpy_host"].append(timed_batches(host_numpy, batches))
        res["graph_host"].append(timed_batches(host_u8, batches))
        it_p, it_f = iter(pre_p), iter(pre_f)
        res["numpy_run"].append(timed_batches(lambda b: plain.run(None, {name_p: next(it_p)}), batches))
        res["graph_run"].append(timed_batches(lambda b: fused.run(None, {name_f: next(it_f)}), batches))
    med = {k: round(statistics.median(v) * 1e3, 3) for k, v in res.items()}
    return {"model": model.name, "imgsz": list(spec.imgsz), "batch": batch, "images": sum(len(b) for b in batches),
            "ms_per_image_median": med, "graph_vs_numpy_total": round(med["numpy_total"] / med["graph_total"], 3),
            "graph_vs_numpy_total_cpu": round(med["numpy_total_cpu"] / med["graph_total_cpu"], 3),
            "max_abs_output_diff": diff}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--imgsz", type=int, default=None, help="also a YOLOv8n at this size (random weights, built here)")
    ap.add_argument("--batches", default="1", help="batch sizes (a fixed-batch model runs its own only)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/unideploy_ort_preprocess"))
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "ort_preprocess.json")
    args = ap.parse_args(argv)

    from unideploy.testing import scene
    from unideploy.tools.bench import library_versions, machine_info

    args.work.mkdir(parents=True, exist_ok=True)
    models = [args.work / "demo" / DEMO_MODEL.name]
    models[0].parent.mkdir(exist_ok=True)
    if not models[0].is_file():
        models[0].write_bytes(DEMO_MODEL.read_bytes())
    if args.imgsz:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_CONFIG_DIR", str(args.work / "yolo_cfg"))
        from unideploy.testing import build_random_yolo

        onnx_path = args.work / f"yolov8n_{args.imgsz}" / "yolov8n.onnx"
        if not onnx_path.is_file():
            onnx_path = build_random_yolo("yolov8n.yaml", onnx_path.parent, args.imgsz)["onnx"]
        models.append(onnx_path)
    rng = np.random.default_rng(0)
    images = [scene(rng, int(rng.integers(360, 720)), int(rng.integers(480, 960))) for _ in range(args.images)]
    before = machine_info()
    results = [measure(m, int(b), images, args.repeats, args.threads) for m in models for b in args.batches.split(",")]
    report = {"settings": vars(args) | {"work": str(args.work), "json": str(args.json)}, "results": results,
              "machine_before": before, "machine_after": machine_info(), "versions": library_versions(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for r in results:
        if "skipped" in r:
            print(f"{r['model']} batch {r['batch']}: skipped ({r['skipped']})")
            continue
        m = r["ms_per_image_median"]
        print(f"{r['model']} {r['imgsz']} batch {r['batch']}: numpy {m['numpy_total']} ms/img (host {m['numpy_host']} + run "
              f"{m['numpy_run']}), graph {m['graph_total']} ms/img (host {m['graph_host']} + run {m['graph_run']}); "
              f"graph/numpy speed {r['graph_vs_numpy_total']}x wall, {r['graph_vs_numpy_total_cpu']}x CPU "
              f"({m['numpy_total_cpu']} vs {m['graph_total_cpu']} CPU ms/img); outputs differ by {r['max_abs_output_diff']:.2e}")
    print(f"load average {before['load_average']} before / {report['machine_after']['load_average']} after")
    return report


if __name__ == "__main__":
    main()
