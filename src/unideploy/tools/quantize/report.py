"""Before/after report of a quantization: size on disk, accuracy (with ``--data``), speed on this machine."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def measure_speed(model: str | os.PathLike, backend: str, *, device: str | None = None, runs: int = 50,
                  warmup: int = 5, **backend_options: Any) -> dict[str, Any]:
    """Latency and throughput of ``model`` on one preprocessed image, with the runtime's default settings.

    * ``ms_per_image``: median latency of synchronous batch-1 runs (OpenVINO latency hint);
    * ``images_per_s``: OpenVINO under the throughput hint with its optimal number of requests in flight
      (``AsyncInferQueue``); ONNX Runtime one run at a time (its intra-op threads already use every core);
    * ``precision``: the precision the float layers ran in (OpenVINO's INFERENCE_PRECISION_HINT of the
      compiled model: bf16 by default on CPUs with native bf16, or what ``precision=`` asked for), else None.

    Timing loops are those of :mod:`unideploy.tools.bench` when it is installed.

    Example:
        >>> measure_speed("model_int8.xml", "openvino", runs=20)  # doctest: +SKIP
        {'ms_per_image': 11.8, 'runs': 20, 'precision': 'bf16', 'images_per_s': 121.5, 'requests': 2, ...}
    """
    from unideploy.runtime.load import load

    runs = max(1, int(runs))
    with load(model, backend, device, **backend_options) as pred:
        x = _input(pred)
        lat = _sync_latencies(pred.session, x, runs, warmup)
        precision = pred.session.compute_precision()
    lat_sorted = sorted(lat)
    median = lat_sorted[len(lat_sorted) // 2]
    out: dict[str, Any] = {"ms_per_image": median * 1e3 / len(x), "runs": runs,
                           "precision": str(precision).lower() if precision else None}
    if backend == "openvino":
        with load(model, backend, device, hint="throughput", **backend_options) as pred:
            ips, requests = _async_throughput(pred.session, x, runs * 2, warmup)
        out.update(images_per_s=ips, requests=requests, mode="async")
    else:
        out.update(images_per_s=len(x) * len(lat) / sum(lat), requests=1, mode="sync")
    return out


def compare_speed(fp32: str | os.PathLike, int8: str | os.PathLike, backend: str, *, device: str | None = None,
                  runs: int = 50) -> dict[str, Any]:
    """Speed of the INT8 model against the float model at the runtime's default precision AND at true FP32.

    On a CPU with native bf16 (``avx512_bf16``, AMX) OpenVINO runs an FP32 IR's float layers in bf16 unless told
    otherwise, so "INT8 vs FP32" has two answers: against the precision the CPU really uses (what a user gets
    by default) and against true FP32 (``INFERENCE_PRECISION_HINT=f32``). The float model is timed both ways
    when they differ (OpenVINO only; ONNX Runtime's CPU default is f32).

    Returns:
        ``{"fp32": default-precision figures, "fp32_f32": true-FP32 figures or None, "int8": figures,
        "speedup": ratios, "recommendation": verdict}`` (see :func:`recommend`).

    Example:
        >>> r = compare_speed("m.xml", "m_int8.xml", "openvino", runs=20)  # doctest: +SKIP
        >>> r["recommendation"]["text"]  # doctest: +SKIP
        'INT8 is 0.83x the throughput of the FP32 model at bf16 (the runtime default) ...'
    """
    fp = measure_speed(fp32, backend, device=device, runs=runs)
    q = measure_speed(int8, backend, device=device, runs=runs)
    f32 = None
    if backend == "openvino" and fp.get("precision") not in (None, "f32"):
        f32 = measure_speed(fp32, backend, device=device, runs=runs, precision="f32")
    speedup = {"latency": fp["ms_per_image"] / q["ms_per_image"],
               "throughput": q["images_per_s"] / fp["images_per_s"], "vs": fp.get("precision") or "default"}
    if f32 is not None:
        speedup.update(latency_vs_f32=f32["ms_per_image"] / q["ms_per_image"],
                       throughput_vs_f32=q["images_per_s"] / f32["images_per_s"])
    out = {"fp32": fp, "fp32_f32": f32, "int8": q, "speedup": speedup}
    out["recommendation"] = recommend(out, fp32, int8)
    return out


#: throughput ratios within this band of 1.0 count as "the same speed" (run-to-run noise of a few per cent)
SAME_SPEED = 0.03


def recommend(speed: dict[str, Any], fp32: str | os.PathLike, int8: str | os.PathLike) -> dict[str, Any]:
    """Which artefact is faster, in plain words, judged on throughput against the runtime's default precision.

    Example:
        >>> recommend({"speedup": {"throughput": 0.83, "vs": "bf16", "throughput_vs_f32": 5.3}}, "a.xml", "b.xml")["faster"]
        'fp32'
    """
    sp = speed["speedup"]
    ratio, vs = sp["throughput"], sp.get("vs") or "default"
    where = f"the FP32 model at {vs} (the runtime default)" if vs not in ("default", "f32") else "the FP32 model"
    text = f"INT8 is {ratio:.2f}x the throughput of {where}"
    if sp.get("throughput_vs_f32") is not None:
        text += f" and {sp['throughput_vs_f32']:.2f}x true FP32 (f32)"
    if ratio < 1.0 - SAME_SPEED:
        faster, model = "fp32", str(fp32)
        text += (f": INT8 is SLOWER than the default precision; for speed use the float model {Path(fp32).name}"
                 f"{f' at its default {vs}' if vs not in ('default', 'f32') else ''} (INT8 is only smaller)")
    elif ratio <= 1.0 + SAME_SPEED:
        faster, model = "same", str(int8)
        text += ": about the same speed as the default precision; INT8 is only smaller"
    else:
        faster, model = "int8", str(int8)
        text += f": use the INT8 model {Path(int8).name}"
    return {"faster": faster, "model": model, "throughput_ratio": ratio, "vs": vs, "text": text}


def _input(pred: Any) -> Any:
    try:
        from unideploy.tools.bench.runners import input_batch

        return input_batch(pred, pred.fixed_batch or 1)
    except ImportError:
        import numpy as np

        img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        x, _ = pred.preprocess(img)
        return np.repeat(x[None], pred.fixed_batch or 1, axis=0)


def _sync_latencies(session: Any, x: Any, runs: int, warmup: int) -> list[float]:
    try:
        from unideploy.tools.bench.runners import pure_inference

        return list(pure_inference(session, x, warmup=warmup, loop=runs, mode="sync").latencies)
    except ImportError:
        feeds = {session.inputs[0].name: x}
        for _ in range(warmup):
            session.run(feeds)
        lat = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(feeds)
            lat.append(time.perf_counter() - t0)
        return lat


def _async_throughput(session: Any, x: Any, runs: int, warmup: int) -> tuple[float, int]:
    try:
        from unideploy.tools.bench.runners import pure_inference

        r = pure_inference(session, x, warmup=warmup, loop=runs, mode="async")
        return r.throughput, r.requests
    except ImportError:
        feeds = {session.inputs[0].name: x}
        with session.async_runner() as runner:
            for f in [runner.submit(feeds) for _ in range(warmup)]:
                f.result()
            t0 = time.perf_counter()
            futures = [runner.submit(feeds) for _ in range(runs)]
            for f in futures:
                f.result()
            wall = time.perf_counter() - t0
            return len(x) * runs / wall, runner.requests


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _speed_word(fp_ms: float, int8_ms: float) -> str:
    """``"1.80x faster"`` or ``"2.17x slower"`` (never a factor below 1 called faster).

    Example:
        >>> _speed_word(10.0, 5.0), _speed_word(10.0, 21.7), _speed_word(10.0, 10.0)
        ('2.00x faster', '2.17x slower', 'same speed')
    """
    if int8_ms <= 0 or fp_ms <= 0:
        return ""
    ratio = fp_ms / int8_ms
    if round(ratio, 2) == 1.0:
        return "same speed"
    return f"{ratio:.2f}x faster" if ratio > 1 else f"{1 / ratio:.2f}x slower"


def format_report(r: dict[str, Any]) -> str:
    """The report as a small before/after table.

    Example:
        >>> print(format_report(report))  # doctest: +SKIP
    """
    fp, q = r["fp32"], r["int8"]
    rows = [("model", Path(fp["model"]).name, Path(q["model"]).name, ""),
            ("size (MB)", _fmt(fp["size_mb"], ".2f"), _fmt(q["size_mb"], ".2f"), f"{fp['size_mb'] / q['size_mb']:.2f}x smaller")]
    if "mAP50-95" in q:
        d = r["accuracy_drop"]
        rows.append(("mAP50-95", _fmt(fp["mAP50-95"], ".4f"), _fmt(q["mAP50-95"], ".4f"), f"{-d['mAP50-95'] * 100:+.2f} pts"))
        rows.append(("mAP50", _fmt(fp["mAP50"], ".4f"), _fmt(q["mAP50"], ".4f"), f"{-d['mAP50'] * 100:+.2f} pts"))
    if "ms_per_image" in q:
        f32 = r.get("fp32_f32")
        at = f" (FP32 at {fp['precision']})" if f32 and fp.get("precision") else ""
        rows.append((f"ms/image{at}", _fmt(fp["ms_per_image"], ".2f"), _fmt(q["ms_per_image"], ".2f"),
                     _speed_word(fp["ms_per_image"], q["ms_per_image"])))
        rows.append((f"images/s ({q.get('mode', '')}){at}", _fmt(fp["images_per_s"], ".1f"), _fmt(q["images_per_s"], ".1f"),
                     f"{q['images_per_s'] / fp['images_per_s']:.2f}x"))
        if f32:
            rows.append(("ms/image (FP32 at f32)", _fmt(f32["ms_per_image"], ".2f"), _fmt(q["ms_per_image"], ".2f"),
                         _speed_word(f32["ms_per_image"], q["ms_per_image"])))
            rows.append((f"images/s ({q.get('mode', '')}) (FP32 at f32)", _fmt(f32["images_per_s"], ".1f"),
                         _fmt(q["images_per_s"], ".1f"), f"{q['images_per_s'] / f32['images_per_s']:.2f}x"))
    w0 = max(len(a) for a, *_ in rows)
    w1 = max(len(b) for _, b, *_ in rows + [("", "FP32", "", "")])
    w2 = max(len(c) for _, _, c, _ in rows + [("", "", "INT8", "")])
    lines = [f"{'':<{w0}}  {'FP32':>{w1}}  {'INT8':>{w2}}"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}  {d}" for a, b, c, d in rows]
    cal = r["calibration"]
    skipped = f", {len(cal['skipped'])} skipped" if cal["skipped"] else ""
    head = (f"{r['backend']} / {r['method']} ({r['preset']} preset): {cal['images']} calibration images{skipped}, "
            f"{r['quantize_s']:.1f} s; {r['int8_ops']} INT8 op(s), {r['float_nodes']} node(s) kept in float")
    gate = r.get("gate")
    if gate:
        head += f"; accuracy gate --max-drop {gate['max_drop']}: {gate['result']}"
    rec = r.get("recommendation")
    if rec:
        lines.append(rec["text"])
    return "\n".join([head] + lines)
