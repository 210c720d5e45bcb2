"""Latency statistics: percentiles (numpy's, linear interpolation) and a summary record.

Example:
    >>> from unideploy.tools.bench.stats import percentile, LatencyStats
    >>> percentile([1, 2, 3, 4], 50)
    2.5
    >>> LatencyStats.from_seconds([0.001, 0.002, 0.003]).median_ms
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


def percentile(values: Sequence[float] | Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``: ``numpy.percentile`` with its default method, "linear"
    (rank ``q/100 * (n - 1)`` in the sorted data, interpolated between its neighbours).

    Raises:
        ValueError: no values, or ``q`` outside 0..100.

    Example:
        >>> percentile([10, 20, 30, 40, 50], 90)
        46.0
    """
    data = np.asarray(list(values), dtype=np.float64)
    if not data.size:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be between 0 and 100, got {q}")
    return float(np.percentile(data, q, method="linear"))


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latencies in milliseconds.

    Example:
        >>> s = LatencyStats.from_seconds([0.010, 0.012, 0.011, 0.050])
        >>> s.n, s.min_ms, round(s.p99_ms, 2)
        (4, 10.0, 48.86)
    """

    n: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> LatencyStats:
        """Statistics of a list of durations given in seconds.

        Raises:
            ValueError: the list is empty.
        """
        ms = [float(s) * 1e3 for s in seconds]
        if not ms:
            raise ValueError("no latencies to summarise")
        mean = sum(ms) / len(ms)
        var = sum((m - mean) ** 2 for m in ms) / len(ms)
        return cls(len(ms), min(ms), mean, percentile(ms, 50), percentile(ms, 90), percentile(ms, 99), max(ms), math.sqrt(var))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def mean_p99_ms(seconds: Sequence[float]) -> dict[str, float] | None:
    """{"mean": ms, "p99": ms, "n": count} of durations in seconds; None when empty.

    Example:
        >>> mean_p99_ms([0.001, 0.003])
        {'mean': 2.0, 'p99': 2.98, 'n': 2}
    """
    if not seconds:
        return None
    ms = [float(s) * 1e3 for s in seconds]
    return {"mean": sum(ms) / len(ms), "p99": percentile(ms, 99), "n": len(ms)}


def median(values: Sequence[float]) -> float:
    """Median (the 50th percentile).

    Example:
        >>> median([3, 1, 2])
        2.0
    """
    return percentile(values, 50)
