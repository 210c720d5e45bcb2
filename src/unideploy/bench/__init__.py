"""Benchmarks: timers, latency statistics, runners (pure inference, end to end, start-up), reports, plots.

Example:
    >>> from unideploy.bench import benchmark, render
    >>> report = benchmark("model.onnx", backend="all", data="images/", loop=50)  # doctest: +SKIP
    >>> print(render(report))  # doctest: +SKIP
"""

from __future__ import annotations

from .core import benchmark
from .report import format_table, library_versions, machine_info, render
from .runners import E2EResult, PureResult, end_to_end, end_to_end_serial, input_batch, pure_inference, startup
from .stats import LatencyStats, mean_p99_ms, percentile

__all__ = ["benchmark", "render", "format_table", "machine_info", "library_versions", "pure_inference", "end_to_end",
           "end_to_end_serial", "input_batch", "startup", "PureResult", "E2EResult", "LatencyStats", "percentile",
           "mean_p99_ms"]
