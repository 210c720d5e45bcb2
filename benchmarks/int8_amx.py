"""INT8 against the precision the CPU really uses: per-layer timings and the search for an INT8 recipe that wins.

On a CPU with native bf16 (``avx512_bf16``; Intel Sapphire Rapids and later also AMX), OpenVINO runs the float
layers of an FP32 IR in bf16 by default (``INFERENCE_PRECISION_HINT``). INT8 then competes with bf16, not with
FP32. This script measures, for RT-DETR-l and YOLOv8n at 640 (random weights, speed only; built and quantized
here) and optionally the bundled RT-DETR demo:

* async throughput (``PERFORMANCE_HINT=THROUGHPUT``, OpenVINO's number of requests) of every variant, interleaved
  over ``--rounds`` rounds, medians: the FP32 IR at ``INFERENCE_PRECISION_HINT=f32`` (true FP32) and at the
  default (bf16 here), INT8 IRs from several recipes (NNCF presets, what stays in float) at the default and at
  f32 for their float layers, and 1 vs 2 streams;
* per-layer timings (``PERF_COUNT``, ``get_profiling_info()``) of one synchronous request: time per layer type and
  per kernel (``exec_type``, e.g. ``brgconv_avx512_core_vnni_I8`` / ``brgconv_avx512_core_bf16_BF16``), and how
  much time runs in INT8, bf16 and f32 kernels.

    python benchmarks/int8_amx.py --out benchmarks/results/int8_amx.json
    python benchmarks/int8_amx.py --models yolov8n --rounds 5 --seconds 5

The models and INT8 IRs are cached under ``--work`` (default ``out/int8_amx``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "unideploy" / "assets" / "demo"
CALIB = REPO / "out" / "shapes_demo" / "images" / "train"

#: INT8 variants per model: name -> unideploy.quantize keyword arguments
INT8_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "rtdetr-l": {
        "int8_rtdetr": dict(recipe="rtdetr"),                      # auto: decoder float
        "int8_seed": dict(recipe="seed"),                          # the write-up: whole graph, MIXED
        "int8_transformer": dict(recipe="transformer"),            # whole graph, NNCF transformer type
    },
    "yolov8n": {
        "int8_mixed": dict(recipe="default"),
        "int8_perf": dict(recipe="default", preset="performance"),
        "int8_perf_head": dict(recipe="default", preset="performance", keep_head_float=False),
    },
    "demo-rtdetr": {
        "int8_rtdetr": dict(recipe="rtdetr"),
        "int8_seed": dict(recipe="seed"),
    },
}


def cpu_flags() -> dict[str, Any]:
    """CPU model and the flags that decide OpenVINO's kernels (bf16, AMX, VNNI)."""
    flags: set[str] = set()
    name = platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    keys = ("avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_vnni", "avx_vnni", "avx512f")
    return {"model": name, **{k: k in flags for k in keys}}


def _export_rtdetr_l(folder: Path, imgsz: int) -> Path:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import RTDETR

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = RTDETR("rtdetr-l.yaml")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        path = Path(model.export(format="onnx", imgsz=imgsz, simplify=True, verbose=False)).resolve()
    finally:
        os.chdir(cwd)
    dest = folder / "rtdetr-l.onnx"
    if path != dest:
        path.replace(dest)
    return dest


def build(name: str, work: Path, imgsz: int = 640, samples: int = 32, calib: Path = CALIB,
          only: list[str] | None = None) -> dict[str, Path]:
    """FP32 ONNX + IR and the INT8 IRs of one model (cached under ``work/name``; ``only``: just these INT8
    variants): {variant: .xml}."""
    import unideploy
    from unideploy.tools.quantize.methods import quiet_third_party

    folder = Path(work).resolve() / name
    if name == "rtdetr-l":
        onnx_path = folder / "rtdetr-l.onnx"
        if not onnx_path.is_file():
            _export_rtdetr_l(folder, imgsz)
    elif name == "yolov8n":
        onnx_path = folder / "yolov8n.onnx"
        if not onnx_path.is_file():
            os.environ.setdefault("YOLO_OFFLINE", "1")
            from unideploy.testing import build_random_yolo

            build_random_yolo("yolov8n.yaml", folder, imgsz)
    elif name == "demo-rtdetr":
        onnx_path = DEMO / "shapes_rtdetr.onnx"
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(INT8_VARIANTS)}")
    out: dict[str, Path] = {}
    fp32 = folder / "fp32" / f"{onnx_path.stem}.xml"
    if not fp32.is_file():
        unideploy.export(onnx_path, to="openvino", out=fp32)
    out["fp32"] = fp32
    for variant, kw in INT8_VARIANTS[name].items():
        if only and variant not in only:
            continue
        dest = folder / variant / f"{onnx_path.stem}_int8.xml"
        if not dest.is_file():
            t0 = time.perf_counter()
            with quiet_third_party():
                unideploy.quantize(onnx_path, calib, backend="openvino", samples=samples, speed=False, out=dest, **kw)
            print(f"quantized {name} {variant} in {time.perf_counter() - t0:.0f} s", flush=True)
        out[variant] = dest
    out["onnx"] = onnx_path
    return out


# -- measuring ---------------------------------------------------------------------------------------
def compile_variant(core: Any, xml: Path, precision: str = "default", hint: str = "THROUGHPUT",
                    streams: int | None = None, perf_count: bool = False) -> Any:
    """The IR compiled for CPU: ``precision`` "default" (the plugin's choice) or an INFERENCE_PRECISION_HINT."""
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if precision != "default":
        cfg["INFERENCE_PRECISION_HINT"] = precision
    if streams:
        cfg["NUM_STREAMS"] = int(streams)
    if perf_count:
        cfg["PERF_COUNT"] = True
    return core.compile_model(str(xml), "CPU", cfg)


def _input(compiled: Any) -> Any:
    import numpy as np

    shape = [d.get_length() for d in compiled.inputs[0].get_partial_shape()]
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def async_fps(compiled: Any, seconds: float, warmup: int = 2) -> dict[str, Any]:
    """Images/s with OpenVINO's optimal number of requests in flight (AsyncInferQueue), one input kept resident."""
    import openvino as ov

    n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, n)
    x = _input(compiled)
    for _ in range(n * warmup):
        queue.start_async({0: x})
    queue.wait_all()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or count < n:
        queue.start_async({0: x})
        count += 1
    queue.wait_all()
    wall = time.perf_counter() - t0
    return {"fps": count * x.shape[0] / wall, "requests": n, "count": count, "wall_s": wall,
            "streams": int(compiled.get_property("NUM_STREAMS")),
            "precision": type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))}


def type_name(t: Any) -> str:
    """"f32" / "bf16" for an OpenVINO element type (or its string)."""
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)


def kernel_precision(exec_type: str) -> str:
    """"int8" / "bf16" / "f32" / "f16" / "other" from an exec type such as ``brgconv_avx512_core_vnni_I8``.

    Example:
        >>> [kernel_precision(e) for e in ("brgconv_avx512_core_vnni_I8", "jit_avx512_BF16", "ref_FP32", "undef")]
        ['int8', 'bf16', 'f32', 'other']
    """
    tail = exec_type.rsplit("_", 1)[-1].upper()
    return {"I8": "int8", "U8": "int8", "BF16": "bf16", "FP32": "f32", "F32": "f32", "FP16": "f16", "F16": "f16",
            "I32": "i32"}.get(tail, "other")


def profile_runs(compiled: dict[str, Any], runs: int = 5) -> dict[str, Any]:
    """Per-layer timings (PERF_COUNT) of one synchronous request per configuration, the configurations
    interleaved over ``runs`` rounds. Each layer's time is its minimum over the rounds (the estimate least
    disturbed by other processes on a shared machine); ``total_ms_median`` is the median of whole-request sums.

    Returns:
        {config: :func:`summarise_layers` result}.
    """
    reqs = {k: cm.create_infer_request() for k, cm in compiled.items()}
    xs = {k: _input(cm) for k, cm in compiled.items()}
    for k, req in reqs.items():
        req.infer({0: xs[k]})
    per_layer: dict[str, dict[tuple[str, str, str], list[float]]] = {k: {} for k in reqs}
    totals: dict[str, list[float]] = {k: [] for k in reqs}
    for _ in range(runs):
        for k, req in reqs.items():
            req.infer({0: xs[k]})
            total = 0.0
            for p in req.get_profiling_info():
                if str(p.status).endswith("EXECUTED") and not str(p.status).endswith("NOT_RUN"):
                    ms = p.real_time.total_seconds() * 1e3
                    per_layer[k].setdefault((p.node_name, p.node_type, p.exec_type), []).append(ms)
                    total += ms
            totals[k].append(total)
    return {k: {**summarise_layers({key: min(v) for key, v in per_layer[k].items()}),
                "total_ms_median": statistics.median(totals[k]), "total_ms_runs": totals[k]} for k in reqs}


def summarise_layers(by_layer: dict[tuple[str, str, str], float]) -> dict[str, Any]:
    """ms per layer type, per (layer type, kernel) and per kernel precision; the 12 slowest layers."""
    by_type: dict[str, float] = {}
    by_kernel: dict[str, float] = {}
    by_prec: dict[str, float] = {}
    for (_, node_type, exec_type), ms in by_layer.items():
        by_type[node_type] = by_type.get(node_type, 0.0) + ms
        k = f"{node_type} / {exec_type}"
        by_kernel[k] = by_kernel.get(k, 0.0) + ms
        prec = kernel_precision(exec_type)
        by_prec[prec] = by_prec.get(prec, 0.0) + ms
    top = sorted(by_layer.items(), key=lambda kv: -kv[1])[:12]

    def rank(d: dict[str, float]) -> dict[str, float]:
        return dict(sorted(((k, round(v, 3)) for k, v in d.items()), key=lambda kv: -kv[1]))

    return {"total_ms": sum(by_layer.values()), "by_precision_ms": rank(by_prec), "by_type_ms": rank(by_type),
            "by_kernel_ms": rank(by_kernel), "layers": len(by_layer),
            "slowest": [{"name": n, "type": t, "exec": e, "ms": round(ms, 3)} for (n, t, e), ms in top]}


def load_average() -> float:
    return os.getloadavg()[0]


def configs(variants: dict[str, Path], only: list[str] | None = None) -> list[dict[str, Any]]:
    """What to time for one model: FP32 at f32 and at the default; each INT8 IR at the default; the first INT8 IR
    with its float layers at f32; FP32 and INT8 with one stream instead of the throughput hint's choice.
    ``only``: just these INT8 variants, at the default precision, beside the two FP32 baselines."""
    int8 = [v for v in variants if v.startswith("int8")]
    out = [dict(variant="fp32", precision="f32"), dict(variant="fp32", precision="default")]
    if only:
        return out + [dict(variant=v, precision="default") for v in only]
    out += [dict(variant=v, precision="default") for v in int8]
    if int8:
        out += [dict(variant=int8[0], precision="f32"), dict(variant=int8[0], precision="default", streams=1)]
    out.append(dict(variant="fp32", precision="default", streams=1))
    return out


def _label(c: dict[str, Any]) -> str:
    return f"{c['variant']}@{c['precision']}" + (f" streams={c['streams']}" if c.get("streams") else "")


def run_model(name: str, work: Path, *, seconds: float, rounds: int, n_profile: int, samples: int,
              only: list[str] | None = None) -> dict[str, Any]:
    import openvino as ov

    variants = build(name, work, samples=samples, only=only)
    core = ov.Core()
    cfgs = configs(variants, only)
    compiled = {}
    for c in cfgs:
        compiled[_label(c)] = compile_variant(core, variants[c["variant"]], c["precision"], streams=c.get("streams"))
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in compiled}
    for r in range(rounds):
        for label, cm in compiled.items():
            m = async_fps(cm, seconds)
            m["load_average"] = load_average()
            rows[label].append(m)
            print(f"{name} round {r}: {label:<32} {m['fps']:8.2f} img/s (x{m['requests']}, {m['streams']} streams, "
                  f"{m['precision']}, load {m['load_average']:.1f})", flush=True)
    compiled.clear()
    med = {k: statistics.median(m["fps"] for m in v) for k, v in rows.items()}
    base_f32, base_def = med["fp32@f32"], med["fp32@default"]
    summary = [{"config": k, "fps": v, "vs_f32": v / base_f32, "vs_default": v / base_def,
                "precision": rows[k][0]["precision"], "streams": rows[k][0]["streams"], "requests": rows[k][0]["requests"],
                "spread": [round(min(m["fps"] for m in rows[k]), 3), round(max(m["fps"] for m in rows[k]), 3)]}
               for k, v in med.items()]
    compiled = {_label(c): compile_variant(core, variants[c["variant"]], c["precision"], hint="LATENCY", perf_count=True)
                for c in cfgs if not c.get("streams")}
    profiles = profile_runs(compiled, n_profile)
    compiled.clear()
    return {"model": name, "files": {k: str(v) for k, v in variants.items()}, "rounds": rows, "summary": summary,
            "profiles": profiles}


def format_tables(res: dict[str, Any]) -> str:
    lines = [f"### {res['model']}", "", "| config | float layers run in | streams x requests | images/s (median) | min-max | "
             "vs true FP32 | vs default |", "|---|---|---|---:|---:|---:|---:|"]
    for s in res["summary"]:
        lines.append(f"| {s['config']} | {s['precision']} | {s['streams']} x {s['requests']} | {s['fps']:.2f} | "
                     f"{s['spread'][0]:.1f}-{s['spread'][1]:.1f} | {s['vs_f32']:.2f}x | {s['vs_default']:.2f}x |")
    lines += ["", "| config (1 request, PERF_COUNT; per layer: min over rounds) | total ms | int8 kernels | bf16 | f32 | other | "
              "top layer types (ms) |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for k, p in res["profiles"].items():
        bp = p["by_precision_ms"]
        top = ", ".join(f"{t} {ms:.1f}" for t, ms in list(p["by_type_ms"].items())[:5])
        lines.append(f"| {k} | {p['total_ms']:.1f} | {bp.get('int8', 0):.1f} | {bp.get('bf16', 0):.1f} | "
                     f"{bp.get('f32', 0):.1f} | {sum(v for q, v in bp.items() if q not in ('int8', 'bf16', 'f32')):.1f} | {top} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rtdetr-l,yolov8n", help="comma-separated: " + ", ".join(INT8_VARIANTS))
    ap.add_argument("--work", default=str(REPO / "out" / "int8_amx"))
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    ap.add_argument("--profile-runs", type=int, default=5)
    ap.add_argument("--samples", type=int, default=32, help="calibration images for the INT8 IRs")
    ap.add_argument("--only", default=None, help="comma-separated INT8 variants to time (beside the FP32 baselines)")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    a = ap.parse_args(argv)
    import openvino as ov

    result: dict[str, Any] = {"cpu": cpu_flags(), "cpu_count": os.cpu_count(), "openvino": ov.__version__,
                              "load_average_start": list(os.getloadavg()), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "seconds": a.seconds, "rounds": a.rounds, "models": {}}
    for name in a.models.split(","):
        res = run_model(name, Path(a.work), seconds=a.seconds, rounds=a.rounds, n_profile=a.profile_runs,
                        samples=a.samples, only=a.only.split(",") if a.only else None)
        result["models"][name] = res
        print(format_tables(res), flush=True)
    result["load_average_end"] = list(os.getloadavg())
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
