"""Bench reports: machine and library versions, text tables, JSON.

Example:
    >>> from unideploy.tools.bench.report import format_table
    >>> print(format_table(["backend", "FPS"], [["onnxruntime", "31.2"], ["openvino", "40.0"]]))
    backend      FPS
    -----------  ----
    onnxruntime  31.2
    openvino     40.0
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

#: distributions whose versions go into every report (the first installed name of each group)
LIBRARIES = (("unideploy",), ("numpy",), ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
             ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), ("openvino",), ("psutil",), ("matplotlib",))


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else platform.processor()).

    Example:
        >>> isinstance(cpu_model(), str)
        True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, cores (logical, physical, usable by this process), RAM, OS, Python and the load average.

    Example:
        >>> info = machine_info()
        >>> info["logical_cores"] >= 1
        True
    """
    info: dict[str, Any] = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "physical_cores": None,
                            "usable_cores": None, "ram_gb": None, "os": platform.platform(),
                            "python": platform.python_version(), "load_average": None}
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 2)
    except Exception:
        try:
            info["ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2)
        except (ValueError, OSError, AttributeError):
            pass
    return info


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that matter for the numbers (None: not installed).

    Example:
        >>> "numpy" in library_versions()
        True
    """
    out: dict[str, str | None] = {}
    for names in LIBRARIES:
        out[names[0]] = None
        for name in names:
            try:
                out[names[0]] = metadata.version(name) if name == names[0] else f"{metadata.version(name)} ({name})"
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width text table (left-aligned; None shown as "-")."""
    cells = [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _f(v: float | None, digits: int = 1) -> str | None:
    return None if v is None else f"{v:.{digits}f}"


def render(report: dict[str, Any]) -> str:
    """The human-readable summary of a :func:`unideploy.tools.bench.benchmark` report: comparison table,
    latency split, end-to-end stage breakdown and start-up.

    Example:
        >>> print(render(benchmark("m.onnx", loop=20)))  # doctest: +SKIP
    """
    main_rows, split_rows, stage_rows, start_rows, errors = [], [], [], [], []
    for run in report["runs"]:
        who = [run["backend"], run["device"], run["precision"], run["format"]]
        if run.get("error"):
            errors.append(f"{run['file']} [{run['backend']}]: {run['error']}")
            continue
        for b in run["batches"]:
            if b.get("skipped"):
                errors.append(f"{run['file']} [{run['backend']}] batch {b['batch']}: {b['skipped']}")
                continue
            pure, e2e = b["pure"], b.get("e2e")
            lat = pure["latency_ms"]
            main_rows.append(who + [run["file"], _f(run["size_mb"]), b["batch"], f"{pure['mode']}x{pure['requests']}",
                                    _f(run.get("map50_95"), 3), _f(lat["median_ms"], 2), _f(lat["p99_ms"], 2),
                                    _f(pure["throughput"]), _f(e2e and e2e["images_per_s"]), _f(b.get("ratio"), 2),
                                    f"{_f(pure.get('cpu_ms_per_image')) or '-'} / {_f(e2e and e2e.get('cpu_ms_per_image')) or '-'}"])
            sp = pure["split"]
            if isinstance(sp, dict):
                split_rows.append(who[:2] + [b["batch"]] + [_f(sp[k] and sp[k]["mean"], 3) for k in ("h2d", "compute", "d2h")])
            else:
                split_rows.append(who[:2] + [b["batch"], "not separable", _f(lat["mean_ms"], 3), "not separable"])
            if e2e:
                st = e2e["stages_ms"]
                stage_rows.append(who[:2] + [b["batch"], run.get("preprocess_in", "host")] + [
                    None if st[k] is None else f"{st[k]['mean']:.2f} / {st[k]['p99']:.2f}"
                    for k in ("read+decode", "preprocess", "inference", "postprocess")] + [_f(1e3 / e2e["images_per_s"], 2) if e2e["images_per_s"] else None])
        s = run.get("startup")
        if s:
            start_rows.append(who[:2] + [run["file"], _f(s["first"]["load_s"] * 1e3, 0), _f(s["cached"]["load_s"] * 1e3, 0),
                                         _f(s["first"]["time_to_first_result_s"] * 1e3, 0), _f(s["first"]["peak_rss_mb"], 0), s["cache"]])
    out = []
    m = report["machine"]
    out.append(f"machine: {m['cpu']}, {m['logical_cores']} logical cores ({m.get('usable_cores')} usable), "
               f"{m.get('ram_gb')} GB RAM, load average {m.get('load_average')}")
    out.append("")
    out.append(format_table(["backend", "device", "precision", "format", "file", "MB", "batch", "mode", "mAP50-95",
                             "median ms", "p99 ms", "FPS", "e2e FPS", "e2e/pure", "CPU ms/img pure / e2e"], main_rows))
    if main_rows:
        out.append("FPS = batch x runs / wall; e2e = Predictor.stream over --data; CPU ms/img = this process's CPU "
                   "time (all threads) per image, which other load on the machine does not inflate")
    if split_rows:
        out += ["", "pure inference split, mean ms per run (host->device, compute, device->host):",
                format_table(["backend", "device", "batch", "h2d", "compute", "d2h"], split_rows)]
    if stage_rows:
        out += ["", "end to end, ms per image, mean / p99 (stages overlap, so they need not add up to wall):",
                format_table(["backend", "device", "batch", "preprocessing in", "read+decode", "preprocess", "inference",
                              "postprocess", "wall/img"], stage_rows)]
        if report.get("settings", {}).get("fast_decode"):
            out.append("read+decode: --fast-decode (large JPEGs decoded at 1/2, 1/4 or 1/8 scale)")
    if start_rows:
        out += ["", "start-up (each load in a fresh process):",
                format_table(["backend", "device", "file", "load ms", "cached load ms", "first result ms",
                              "peak RSS MB", "cache"], start_rows)]
    if errors:
        out += ["", "not measured:"] + [f"  {e}" for e in errors]
    for note in report.get("notes", []):
        out.append(f"note: {note}")
    return "\n".join(out)
