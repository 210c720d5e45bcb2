"""``unideploy bench MODEL``: latency, throughput, end-to-end FPS, start-up and memory, on one or every backend."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import (
    check_outputs, examples, non_negative_int, positive_int, run_precision, threads,
)


def _batches(text: str) -> list[int]:
    try:
        out = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        out = []
    if not out or any(b < 1 for b in out):
        raise argparse.ArgumentTypeError(f"expected positive integers like 1 or 1,8, got {text!r}")
    return out


def parse_options(items: list[str]) -> dict:
    """["spin=false", "hint=throughput", "threads=2"] -> {"spin": False, "hint": "throughput", "threads": 2}.

    Example:
        >>> parse_options(["spin=false", "threads=2"])
        {'spin': False, 'threads': 2}
    """
    from unideploy.core.errors import InputError

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option expects KEY=VALUE, e.g. spin=false or hint=throughput; got {item!r}")
        low = value.strip().lower()
        if low in ("true", "on", "yes"):
            out[key.strip()] = True
        elif low in ("false", "off", "no"):
            out[key.strip()] = False
        else:
            try:
                out[key.strip()] = int(value)
            except ValueError:
                out[key.strip()] = value.strip()
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``unideploy bench`` (imports nothing heavy: ``--help`` stays fast)."""
    p = sub.add_parser(
        "bench", help="benchmark a model: latency, throughput, end-to-end FPS, start-up, memory",
        description="Pure inference on a resident preprocessed tensor (latency min/mean/median/p90/p99, "
                    "throughput = batch x runs / wall), end to end over --data (per-stage times, images/s, "
                    "ratio to pure inference), start-up in fresh processes (first and cached load, time to "
                    "first result, peak RSS). --backend all compares every installed backend and every "
                    "precision variant found beside the model.",
        epilog=examples("unideploy bench model.onnx --loop 200",
                        "unideploy bench model.onnx --backend all --data images/ --json bench.json",
                        "unideploy bench model_openvino_model/ --precision fp32 --batch 1,8 --mode async"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file (.onnx, OpenVINO .xml or its folder)")
    p.add_argument("--backend", default=None, help="runtime name, or 'all' (default: by file type)")
    p.add_argument("--device", default=None, help="device, e.g. cpu, cuda:0, CPU, GPU (default: each backend's)")
    p.add_argument("--batch", type=_batches, default=[1], metavar="N[,N...]", help="batch sizes (default 1)")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="untimed runs first (default 10)")
    how_long = p.add_mutually_exclusive_group()
    how_long.add_argument("--loop", type=positive_int, default=100, help="timed runs (default 100)")
    how_long.add_argument("--time", default=None, metavar="DURATION", help="run for a time instead, e.g. 10s, 500ms, 2m")
    p.add_argument("--mode", choices=("sync", "async"), default="sync",
                   help="sync: one run at a time; async: --requests runs in flight (default sync)")
    p.add_argument("--requests", type=positive_int, default=None, help="runs in flight in async mode (default: the runtime's)")
    p.add_argument("--data", default=None, metavar="SOURCE",
                   help="images for the end-to-end run: folder, glob, video, or data.yaml / COCO json (adds mAP)")
    p.add_argument("--threads", type=threads, default=None, help="runtime threads (default 0: the runtime's choice)")
    p.add_argument("--precision", type=run_precision, default=None, metavar="fp32|fp16|bf16",
                   help="inference precision where the runtime chooses it (OpenVINO's INFERENCE_PRECISION_HINT, whose "
                        "CPU default may be bf16); f32 and f16 are aliases")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option passed to Backend.open, repeatable, e.g. -O spin=false (ONNX Runtime "
                        "busy-waiting) or -O hint=throughput (OpenVINO); options a backend does not use are ignored")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode large JPEGs of --data at 1/2, 1/4 or 1/8 scale, the smallest still >= the model input")
    p.add_argument("--no-startup", action="store_true", help="skip the start-up measurement (2 subprocesses per model)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the full report as JSON")
    p.add_argument("--plot", metavar="FILE", default=None, help="write a PNG plot (needs matplotlib: unideploy[plot])")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the flags, call :func:`unideploy.tools.bench.benchmark`, print the tables, write JSON / PNG."""
    from unideploy.tools.bench import benchmark, render
    from unideploy.tools.bench.timers import parse_duration
    from unideploy.core.errors import InputError

    check_outputs(files={"--json": args.json, "--plot": args.plot})
    if args.requests is not None and args.mode != "async":
        raise InputError("--requests needs --mode async (sync mode runs one request at a time)")
    if args.plot:
        from unideploy.tools.bench.plot import require_matplotlib

        require_matplotlib()  # fail before the measurements, not after
    duration = parse_duration(args.time) if args.time else None
    options = parse_options(args.option)
    if args.precision:
        if "precision" in options:
            raise InputError("--precision and -O precision=... both given; give it once")
        options["precision"] = args.precision
    report = benchmark(
        args.model, backend=args.backend, device=args.device, batches=args.batch, warmup=args.warmup,
        loop=None if duration else args.loop, duration=duration, mode=args.mode, requests=args.requests,
        data=args.data, measure_startup=not args.no_startup, threads=args.threads,
        backend_options={"*": options} if options else None, fast_decode=args.fast_decode,
        log=None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True)),
    )
    measured = any(b.get("pure") for r in report["runs"] for b in r["batches"])
    if not measured and len(report["runs"]) == 1:  # one model, nothing measured: one error line, no empty table
        run = report["runs"][0]
        why = run.get("error") or "; ".join(f"batch {b['batch']}: {b['skipped']}" for b in run["batches"])
        raise InputError(f"{run['file']}: nothing measured: {why}")
    print(render(report))
    if args.json:
        from unideploy.core.sinks import atomic_write_json

        atomic_write_json(args.json, report)
        print(f"saved {args.json}", file=sys.stderr)
    if args.plot:
        from unideploy.tools.bench.plot import save_plot

        save_plot(report, args.plot)
        print(f"saved {args.plot}", file=sys.stderr)
    return 0 if measured else 1
