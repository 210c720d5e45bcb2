"""Benchmark runners: pure inference on a resident tensor, end to end over a source, start-up in a subprocess.

The benchmark owns the clock; backends only expose hooks (``Session.last_timings`` for a host->device /
compute / device->host split, ``Session.async_runner`` for runs in flight).

Example:
    >>> import numpy as np, unideploy
    >>> from unideploy.tools.bench.runners import pure_inference, end_to_end
    >>> with unideploy.load("model.onnx") as p:  # doctest: +SKIP
    ...     x = input_batch(p, 1)
    ...     pure = pure_inference(p.session, x, warmup=5, loop=50)
    ...     e2e = end_to_end(p, "images/")
    ...     print(pure.throughput, e2e.images_per_s)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import BackendError, InputError
from unideploy.tools.bench.stats import LatencyStats, mean_p99_ms

MODES = ("sync", "async")
STAGES = ("decode", "preprocess", "inference", "postprocess")
#: human label of each stage in reports
STAGE_LABELS = {"decode": "read+decode", "preprocess": "preprocess", "inference": "inference", "postprocess": "postprocess"}


@dataclass
class PureResult:
    """Pure inference on one resident input batch.

    ``latencies`` are seconds per run (in async mode: from the start of the run to its completion, with
    other runs in flight); ``split`` holds per-run h2d / compute / d2h seconds, or None when the backend
    cannot separate them.

    Example:
        >>> r = PureResult(batch=2, mode="sync", requests=1, runs=10, wall_s=0.5, latencies=[0.05] * 10)
        >>> r.throughput, r.stats.median_ms
        (40.0, 50.0)
    """

    batch: int
    mode: str
    requests: int
    runs: int
    wall_s: float
    latencies: list[float]
    split: dict[str, list[float]] | None = None
    #: CPU seconds this process used (all threads) during the timed runs: robust to other load on the machine
    cpu_s: float | None = None

    @property
    def throughput(self) -> float:
        """Inferences (images) per second: batch x runs / wall time."""
        return self.batch * self.runs / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def stats(self) -> LatencyStats:
        return LatencyStats.from_seconds(self.latencies)

    def to_dict(self) -> dict[str, Any]:
        split: Any = "not separable"
        if self.split:
            split = {k: mean_p99_ms(v) for k, v in self.split.items()}
        return {"batch": self.batch, "mode": self.mode, "requests": self.requests, "runs": self.runs,
                "wall_s": self.wall_s, "throughput": self.throughput, "latency_ms": self.stats.to_dict(), "split": split,
                "cpu_s": self.cpu_s, "cpu_ms_per_image": _per_image_ms(self.cpu_s, self.batch * self.runs)}


@dataclass
class E2EResult:
    """One pass of ``Predictor.stream`` over a source: images/s and per-image stage seconds.

    Example:
        >>> E2EResult(images=30, failed=0, wall_s=1.5, batch=1, requests=2).images_per_s
        20.0
    """

    images: int
    failed: int
    wall_s: float
    batch: int
    requests: int
    stages: dict[str, list[float]] = field(default_factory=dict)
    pipelined: bool = True
    cpu_s: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "failed": self.failed, "wall_s": self.wall_s, "batch": self.batch,
                "requests": self.requests, "pipelined": self.pipelined, "images_per_s": self.images_per_s,
                "cpu_s": self.cpu_s, "cpu_ms_per_image": _per_image_ms(self.cpu_s, self.images),
                "stages_ms": {STAGE_LABELS[k]: mean_p99_ms(self.stages.get(k, [])) for k in STAGES}}


def _per_image_ms(cpu_s: float | None, n: int) -> float | None:
    return None if cpu_s is None or not n else cpu_s / n * 1e3


def input_batch(predictor: Any, batch: int, image: np.ndarray | None = None) -> np.ndarray:
    """A preprocessed input batch for ``predictor``: ``image`` (or a synthetic 640x480 scene) repeated.

    Raises:
        InputError: ``batch`` does not fit a fixed-batch model.

    Example:
        >>> x = input_batch(predictor, 4)  # (4, 3, H, W) float32  # doctest: +SKIP
    """
    fixed = predictor.fixed_batch
    if fixed and batch != fixed:
        raise InputError(f"model input '{predictor.session.inputs[0].name}' has a fixed batch of {fixed}; batch {batch} given")
    if image is None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    x, _ = predictor.preprocess(image)
    return np.ascontiguousarray(np.repeat(x[None], batch, axis=0))


def _done(count: int, loop: int | None, t_start: float, duration: float | None) -> bool:
    if duration is not None:
        return time.perf_counter() - t_start >= duration
    return count >= (loop or 0)


def pure_inference(session: Any, x: np.ndarray, *, warmup: int = 10, loop: int | None = 100,
                   duration: float | None = None, mode: str = "sync", requests: int | None = None) -> PureResult:
    """Time ``session`` on the resident batch ``x``: ``loop`` runs, or as many as fit in ``duration`` seconds.

    Args:
        session: an open :class:`~unideploy.runtime.backends.base.Session`.
        x: the input batch (already preprocessed, first input of the model).
        warmup: untimed runs first.
        loop: timed runs (ignored when ``duration`` is given).
        duration: run for this many seconds instead.
        mode: "sync" (one run at a time, ``Session.run``) or "async" (``requests`` runs in flight).
        requests: runs in flight in async mode (default: the session's optimal number).

    Raises:
        InputError: unknown mode, or neither a positive loop nor a duration.

    Example:
        >>> r = pure_inference(predictor.session, input_batch(predictor, 1), mode="async", requests=2)  # doctest: +SKIP
        >>> r.throughput, r.stats.p99_ms  # doctest: +SKIP
    """
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if duration is None and (loop is None or loop < 1):
        raise InputError(f"--loop must be a positive integer, got {loop}")
    feeds = {session.inputs[0].name: x}
    batch = int(x.shape[0])
    if mode == "sync":
        for _ in range(max(0, warmup)):
            session.run(feeds)
        lat: list[float] = []
        split: dict[str, list[float]] = {"h2d": [], "compute": [], "d2h": []}
        separable = True
        c_start = time.process_time()
        t_start = time.perf_counter()
        while not _done(len(lat), loop, t_start, duration):
            t0 = time.perf_counter()
            session.run(feeds)
            lat.append(time.perf_counter() - t0)
            tm = session.last_timings
            if separable and tm.h2d is not None and tm.d2h is not None and tm.compute is not None:
                split["h2d"].append(tm.h2d)
                split["compute"].append(tm.compute)
                split["d2h"].append(tm.d2h)
            else:
                separable = False
        wall = time.perf_counter() - t_start
        cpu = time.process_time() - c_start
        return PureResult(batch, "sync", 1, len(lat), wall, lat, split if separable and split["compute"] else None, cpu)
    with session.async_runner(requests) as runner:
        n_req = runner.requests
        for f in [runner.submit(feeds) for _ in range(max(0, warmup))]:
            f.result()
        futures = []
        c_start = time.process_time()
        t_start = time.perf_counter()
        while not _done(len(futures), loop, t_start, duration):
            futures.append(runner.submit(feeds))
        for f in futures:
            f.result()
        wall = time.perf_counter() - t_start
        cpu = time.process_time() - c_start
    lat = [f.finished - f.started for f in futures]
    return PureResult(batch, "async", n_req, len(futures), wall, lat, None, cpu)


def _reset_times(predictor: Any) -> None:
    from unideploy.runtime.stream import StageTimes

    predictor.times = StageTimes()


def _stage_lists(predictor: Any) -> dict[str, list[float]]:
    return {k: list(getattr(predictor.times, k)) for k in STAGES}


def end_to_end(predictor: Any, source: Any, *, requests: int | None = None, warmup_items: int = 4,
               vid_stride: int = 1) -> E2EResult:
    """One timed pass of the pipelined ``predictor.stream`` over ``source`` (after a short warm-up pass).

    Returns images/s (successful images / wall time) and per-image stage seconds: read+decode and
    preprocess (worker threads), inference (per batch, divided by its size), postprocess.

    Example:
        >>> end_to_end(predictor, "images/", requests=2).images_per_s  # doctest: +SKIP
    """
    from unideploy.core.sources import Source

    src = source if isinstance(source, Source) else Source(source, vid_stride)
    if warmup_items and src.video is None and src.entries:
        for _ in predictor.stream(Source(src.entries[:warmup_items]), requests=requests):
            pass
    _reset_times(predictor)
    ok = failed = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for out in predictor.stream(src, requests=requests):
        if out.ok:
            ok += 1
        else:
            failed += 1
    wall = time.perf_counter() - t0
    return E2EResult(ok, failed, wall, predictor.batch, int(requests or predictor.requests), _stage_lists(predictor), True,
                     time.process_time() - c0)


def end_to_end_serial(predictor: Any, source: Any, *, warmup_items: int = 4, vid_stride: int = 1) -> E2EResult:
    """The same pass without overlap: decode, preprocess, infer and postprocess one batch at a time in
    the calling thread (the baseline the pipelined predictor is measured against).

    Example:
        >>> end_to_end_serial(predictor, "images/").images_per_s  # doctest: +SKIP
    """
    from unideploy.core.errors import UnideployError
    from unideploy.core.sources import Source

    src = source if isinstance(source, Source) else Source(source, vid_stride)

    def run(items: Any) -> tuple[int, int]:
        ok = failed = 0
        chunk: list[np.ndarray] = []
        for item in items:
            t0 = time.perf_counter()
            try:
                img = item.load()
            except UnideployError:
                failed += 1
                continue
            predictor.times.decode.append(time.perf_counter() - t0)
            chunk.append(img)
            if len(chunk) == predictor.batch:
                ok += len(_serial_chunk(predictor, chunk))
                chunk = []
        if chunk:
            ok += len(_serial_chunk(predictor, chunk))
        return ok, failed

    if warmup_items and src.video is None and src.entries:
        run(Source(src.entries[:warmup_items]))
    _reset_times(predictor)
    c0 = time.process_time()
    t0 = time.perf_counter()
    ok, failed = run(src)
    wall = time.perf_counter() - t0
    return E2EResult(ok, failed, wall, predictor.batch, 1, _stage_lists(predictor), False, time.process_time() - c0)


def _serial_chunk(predictor: Any, images: list[np.ndarray]) -> list[Any]:
    prepped = []
    for im in images:
        t0 = time.perf_counter()
        prepped.append(predictor.preprocess(im))
        predictor.times.preprocess.append(time.perf_counter() - t0)
    return predictor._run_chunk(prepped, predictor.options)


# -- start-up ---------------------------------------------------------------------------------------
def startup(model: str | os.PathLike, backend: str, device: str | None = None, options: dict[str, Any] | None = None,
            *, timeout: float = 600) -> dict[str, Any]:
    """Model load time (first and cached), time to first result and peak RSS, each load in a fresh process.

    The first load gets an empty compiled-model cache (OpenVINO ``CACHE_DIR`` in a new temporary folder);
    the second load reuses it. ONNX Runtime has no such cache: its second load only profits from the OS
    file cache. Runs ``python -m unideploy.tools.bench.startup`` twice.

    Returns:
        {"first": {...}, "cached": {...}, "cache": description} where each load reports ``import_s`` (the
        runtime's import), ``load_s`` (Predictor construction: spec, session, adapter), ``first_run_s``
        (first inference + postprocess), ``time_to_first_result_s`` (their sum) and ``peak_rss_mb``.

    Raises:
        BackendError: the subprocess failed (its last error line is in the message).

    Example:
        >>> startup("m.onnx", "openvino")["cached"]["load_s"]  # doctest: +SKIP
    """
    opts = dict(options or {})
    cache_dir = tempfile.mkdtemp(prefix="unideploy_bench_cache_")
    uses_cache = backend == "openvino"
    if uses_cache:
        opts["cache_dir"] = cache_dir
    try:
        first = _startup_once(model, backend, device, opts, timeout)
        cached = _startup_once(model, backend, device, opts, timeout)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    how = "OpenVINO CACHE_DIR (compiled blob)" if uses_cache else "none (second load: OS file cache only)"
    return {"first": first, "cached": cached, "cache": how}


def _startup_once(model: Any, backend: str, device: str | None, options: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "unideploy.tools.bench.startup", str(model), "--backend", backend,
           "--options", json.dumps(options)]
    if device:
        cmd += ["--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackendError(f"start-up measurement of {model} on {backend} took longer than {timeout:.0f} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"start-up measurement of {Path(str(model)).name} on {backend} failed: {err}")
    return json.loads(lines[-1])
