"""Benchmarks: timers, latency statistics, runners (pure inference, end to end, start-up), reports, plots.

Example:
    >>> from unideploy.tools.bench import benchmark, render
    >>> report = benchmark("model.onnx", backend="all", data="images/", loop=50)  # doctest: +SKIP
    >>> print(render(report))  # doctest: +SKIP
"""

from __future__ import annotations

from unideploy.tools.bench.core import benchmark
from unideploy.tools.bench.report import format_table, library_versions, machine_info, render
from unideploy.tools.bench.runners import E2EResult, PureResult, end_to_end, end_to_end_serial, input_batch, pure_inference, startup
from unideploy.tools.bench.stats import LatencyStats, mean_p99_ms, percentile

__all__ = [
           "E2EResult",
           "LatencyStats",
           "PureResult",
           "benchmark",
           "end_to_end",
           "end_to_end_serial",
           "format_table",
           "input_batch",
           "library_versions",
           "machine_info",
           "mean_p99_ms",
           "percentile",
           "pure_inference",
           "render",
           "startup",
]
