"""OpenVINO's ``benchmark_app`` beside ``unideploy bench`` on the same IR files, in one run.

The RT-DETR INT8 write-up measured speed with ``benchmark_app -m MODEL -d CPU -api async -shape [1,3,H,W]``.
This script runs that tool and ``unideploy bench`` (pure inference on a resident tensor) on each model, in each
precision and mode, interleaved, and prints / writes both figures and their ratio, so a table in the docs shows
where unideploy's number comes from and how it compares with OpenVINO's own tool.

Configurations per model:

* precision ``f32``: ``benchmark_app -infer_precision f32`` / ``unideploy bench --precision fp32`` (true FP32);
  precision ``default``: no hint (the CPU plugin's default: bf16 on CPUs with native bf16);
* mode ``sync``: ``-api sync`` (latency hint, one request) / ``--mode sync``;
  mode ``async``: ``-api async`` (throughput hint, OpenVINO's number of requests) / ``--mode async -O
  hint=throughput`` with the same number of requests as benchmark_app used.

Both tools fill the input once and time only inference. The ratio is unideploy FPS / benchmark_app FPS.

    python benchmarks/benchmark_app.py MODEL_openvino_model/ MODEL_int8_openvino_model/ --time 10 \\
        --out benchmarks/results/benchmark_app.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_NUM = r"([0-9]+(?:\.[0-9]+)?)"


def parse_benchmark_app(text: str) -> dict:
    """Figures from ``benchmark_app``'s console report (OpenVINO 2023-2026 format).

    Returns:
        dict with ``throughput_fps``, ``count``, ``duration_ms``, ``median_ms`` / ``average_ms`` / ``min_ms`` /
        ``max_ms``, ``requests`` (infer requests in flight), ``streams`` and ``precision`` (the compiled model's
        INFERENCE_PRECISION_HINT) where the report has them.

    Raises:
        ValueError: no ``Throughput: ... FPS`` line (the run failed; the message quotes the last line).

    Example:
        >>> parse_benchmark_app("[ INFO ] Count: 10 iterations\\n[ INFO ] Throughput:   97.56 FPS")["throughput_fps"]
        97.56
    """
    out: dict = {}
    pats = {
        "throughput_fps": rf"Throughput:\s*{_NUM}\s*FPS",
        "count": r"Count:\s*([0-9]+)\s*iterations",
        "duration_ms": rf"Duration:\s*{_NUM}\s*ms",
        "median_ms": rf"Median:\s*{_NUM}\s*ms",
        "average_ms": rf"Average:\s*{_NUM}\s*ms",
        "min_ms": rf"Min:\s*{_NUM}\s*ms",
        "max_ms": rf"Max:\s*{_NUM}\s*ms",
        "requests": r"Measuring performance \(.*?([0-9]+) inference requests",
        "streams": r"NUM_STREAMS:\s*([0-9]+)",
        "precision": r"INFERENCE_PRECISION_HINT:\s*(?:<Type: ')?([A-Za-z0-9_]+)",
    }
    for key, pat in pats.items():
        m = re.findall(pat, text)
        if m:
            v = m[-1]
            out[key] = v if key == "precision" else (int(v) if key in ("count", "requests", "streams") else float(v))
    if "throughput_fps" not in out:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise ValueError(f"benchmark_app reported no throughput; last line: {last[0].strip()}")
    return out


def _xml(path: Path) -> Path:
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise SystemExit(f"{path}: expected one .xml in the folder, found {len(xmls)}")
        return xmls[0]
    if path.suffix.lower() != ".xml":
        raise SystemExit(f"{path}: expected an OpenVINO IR (.xml or its folder); convert with unideploy export --to openvino")
    return path


def _shape(xml: Path) -> list[int]:
    import openvino as ov

    shape = ov.Core().read_model(str(xml)).inputs[0].get_partial_shape()
    if shape.is_dynamic:
        raise SystemExit(f"{xml}: dynamic input shape {shape}; export it with a static shape")
    return [d.get_length() for d in shape]


def _tool() -> str:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(exe).exists():
        raise SystemExit("benchmark_app not found: it ships with the openvino package (pip install openvino)")
    return exe


def run_benchmark_app(xml: Path, shape: list[int], mode: str, precision: str, seconds: float) -> dict:
    cmd = [_tool(), "-m", str(xml), "-d", "CPU", "-api", mode, "-shape", "[" + ",".join(map(str, shape)) + "]",
           "-t", str(int(max(1, seconds)))]
    if mode == "sync":
        cmd += ["-hint", "latency"]
    if precision == "f32":
        cmd += ["-infer_precision", "f32"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    r = parse_benchmark_app(p.stdout + p.stderr)
    if mode == "sync":
        r.setdefault("requests", 1)
    r["command"] = " ".join(cmd)
    return r


def run_unideploy(xml: Path, mode: str, precision: str, seconds: float, requests: int | None, work: Path) -> dict:
    out = work / f"bench_{xml.stem}_{mode}_{precision}.json"
    cmd = [sys.executable, "-m", "unideploy", "bench", str(xml), "--backend", "openvino", "--mode", mode,
           "--time", f"{seconds}s", "--warmup", "10", "--no-startup", "--json", str(out), "-q"]
    if precision == "f32":
        cmd += ["--precision", "fp32"]
    cmd += ["-O", "hint=throughput"] if mode == "async" else ["-O", "hint=latency"]
    if mode == "async" and requests:
        cmd += ["--requests", str(requests)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"unideploy bench failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    run = json.loads(out.read_text())["runs"][0]
    pure = run["batches"][0]["pure"]
    return {"throughput_fps": pure["throughput"], "median_ms": pure["latency_ms"].get("median_ms"),
            "requests": pure["requests"], "runs": pure["runs"], "precision": run.get("precision"),
            "command": " ".join(cmd[1:])}


def summarise(rows: list[dict]) -> list[dict]:
    """Median FPS / median latency per (model, precision, mode) over the rounds, and the unideploy/benchmark_app ratio."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["precision"], r["mode"]), []).append(r)
    out = []
    for (model, precision, mode), rs in groups.items():
        ba = statistics.median(r["benchmark_app"]["throughput_fps"] for r in rs)
        ud = statistics.median(r["unideploy"]["throughput_fps"] for r in rs)
        out.append({"model": model, "precision": precision, "mode": mode, "rounds": len(rs),
                    "benchmark_app_fps": ba, "unideploy_fps": ud, "ratio_fps": ud / ba,
                    "benchmark_app_median_ms": statistics.median(r["benchmark_app"].get("median_ms", 0) for r in rs),
                    "unideploy_median_ms": statistics.median(r["unideploy"].get("median_ms") or 0 for r in rs),
                    "requests": rs[0]["benchmark_app"].get("requests")})
    return out


def format_summary(summary: list[dict]) -> str:
    """The medians as a Markdown table."""
    lines = ["| model | precision | mode | benchmark_app FPS | unideploy FPS | ratio | median ms (b_a / unideploy) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {Path(s['model']).parent.name}/{Path(s['model']).name} | {s['precision']} | {s['mode']} "
                     f"x{s['requests']} | {s['benchmark_app_fps']:.1f} | {s['unideploy_fps']:.1f} | {s['ratio_fps']:.2f} | "
                     f"{s['benchmark_app_median_ms']:.2f} / {s['unideploy_median_ms']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="OpenVINO IRs (.xml or folder), e.g. the FP32 and INT8 models")
    ap.add_argument("--time", type=float, default=10.0, help="seconds per measurement (default 10)")
    ap.add_argument("--modes", default="sync,async")
    ap.add_argument("--precisions", default="f32,default")
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything N times; the table gives medians")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="benchmark_app_"))
    rows = []
    models = [(_xml(Path(m)), None) for m in a.models]
    models = [(xml, _shape(xml)) for xml, _ in models]
    for r in range(a.rounds):
        for xml, shape in models:
            for precision in a.precisions.split(","):
                for mode in a.modes.split(","):
                    ba = run_benchmark_app(xml, shape, mode, precision, a.time)
                    ud = run_unideploy(xml, mode, precision, a.time, ba.get("requests"), work)
                    row = {"round": r, "model": str(xml), "shape": shape, "precision": precision, "mode": mode,
                           "benchmark_app": ba, "unideploy": ud, "ratio_fps": ud["throughput_fps"] / ba["throughput_fps"],
                           "load_average": os.getloadavg()[0]}
                    rows.append(row)
                    print(f"{xml.parent.name}/{xml.name} {precision} {mode}: benchmark_app {ba['throughput_fps']:.1f} FPS "
                          f"(x{ba.get('requests', '?')}, {ba.get('precision', '?')}), unideploy {ud['throughput_fps']:.1f} "
                          f"FPS (x{ud['requests']}), ratio {row['ratio_fps']:.2f}, load {row['load_average']:.1f}",
                          flush=True)
    shutil.rmtree(work, ignore_errors=True)
    import openvino as ov

    summary = summarise(rows)
    print(format_summary(summary))
    result = {"summary": summary, "rows": rows, "cpu_count": os.cpu_count(), "openvino": ov.__version__,
              "seconds": a.time, "rounds": a.rounds, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2))
        print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
