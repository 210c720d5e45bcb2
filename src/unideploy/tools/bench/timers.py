"""Clocks and memory probes for benchmarks: a perf_counter timer, duration parsing, RSS.

Example:
    >>> from unideploy.tools.bench.timers import Timer, parse_duration
    >>> with Timer() as t:
    ...     pass
    >>> t.seconds >= 0
    True
    >>> parse_duration("1.5s"), parse_duration("250ms"), parse_duration("2m")
    (1.5, 0.25, 120.0)
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

from unideploy.core.errors import InputError


class Timer:
    """Wall-clock timer (``time.perf_counter``) as a context manager; ``seconds`` holds the elapsed time.

    Example:
        >>> with Timer() as t:
        ...     _ = sum(range(1000))
        >>> t.seconds < 10
        True
    """

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from "10s", "500ms", "2m", "1.5" (seconds) or a number.

    Raises:
        InputError: not a positive duration (the message shows the accepted forms).

    Example:
        >>> parse_duration("10s"), parse_duration("500ms")
        (10.0, 0.5)
    """
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|sec|m|min)?\s*", str(text).lower())
        if not m:
            raise InputError(f"--time expects a duration like 10s, 500ms or 2m, got {text!r}")
        value = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if value <= 0:
        raise InputError(f"--time expects a positive duration, got {text!r}")
    return value


def rss_mb() -> float | None:
    """Current resident set size of this process in MiB (psutil, else /proc; None where neither works).

    Example:
        >>> (rss_mb() or 1) > 0
        True
    """
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except Exception:
        return None


def os_threads() -> int:
    """Threads of this process as the kernel sees them (runtime pools included), or Python's count off Linux.

    Example:
        >>> os_threads() >= 1
        True
    """
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def open_fds() -> int:
    """Open file descriptors of this process (psutil off Linux; -1 when neither works)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        try:
            import psutil

            return psutil.Process().num_fds()
        except Exception:
            return -1


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status (``ru_maxrss`` is preserved across exec, so a subprocess could
    report its parent's peak); elsewhere ``resource.getrusage``; None on Windows.

    Example:
        >>> (peak_rss_mb() or 1) >= (rss_mb() or 0) * 0.5
        True
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):  # the high-water mark is updated lazily: never below now
                    return max(int(line.split()[1]) / 1024, rss_mb() or 0.0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
