"""OpenVINO backend: CPU / GPU / AUTO devices, latency/throughput hints, compiled-model cache."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, DeviceError, InputError, ModelError
from ..security import check_model_file
from .base import AsyncRunner, Backend, Session, TensorInfo


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def shared_core(ov: Any) -> Any:
    """One ``openvino.Core`` per process.

    Creating and dropping a Core per model, with streams abandoned mid-way, corrupted the heap now and then
    (openvino 2026.4: a segfault in about 8 of 20 runs of 100 create/close cycles, never with one shared Core).
    """
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = ov.Core()
        return _CORE


def default_cache_dir() -> Path:
    base = os.environ.get("UNIDEPLOY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "unideploy"
    )
    return Path(base) / "openvino"


def prune_cache(cache: str | Path, max_bytes: int, keep_since: float | None = None) -> list[Path]:
    """Delete the oldest files of a compiled-model cache folder until it holds at most ``max_bytes``.

    OpenVINO never evicts: every model (and every device/precision/hint) compiled with a cache folder leaves a
    blob there (13 MB for YOLOv8n-640), and a machine that exports many models fills its disk. Oldest is by
    modification time, i.e. when the blob was compiled (OpenVINO does not say which blob a cache hit read, so
    use is not tracked); a pruned model is simply compiled again. Files modified at or after ``keep_since``
    (this process's own compile) are never deleted. Returns the deleted paths.
    """
    files = []
    for f in Path(cache).iterdir():
        try:
            st = f.stat()
        except OSError:  # removed by another process meanwhile
            continue
        if stat.S_ISREG(st.st_mode):
            files.append((st.st_mtime, f.name, st.st_size, f))
    total = sum(size for _, _, size, _ in files)
    removed: list[Path] = []
    for mtime, _, size, f in sorted(files):
        if total <= max_bytes or (keep_since is not None and mtime >= keep_since):
            break
        try:
            f.unlink()  # a process reading it keeps its open handle (POSIX)
        except OSError:
            continue
        total -= size
        removed.append(f)
    return removed


def _dims(pshape: Any) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in pshape)


class OpenVINOSession(Session):
    backend = "openvino"
    thread_safe = True  # one infer request per thread, created on first use

    def __init__(self, path: Path, device: str, compiled: Any, meta: dict[str, str]):
        super().__init__(path, device)
        self.compiled = compiled
        self._meta = meta
        self._local = threading.local()
        self._requests: list[Any] = []
        self.inputs = [
            TensorInfo(p.get_any_name(), _dims(p.get_partial_shape()), np.dtype(p.get_element_type().to_dtype()))
            for p in compiled.inputs
        ]
        self.outputs = [
            TensorInfo(p.get_any_name() if p.get_names() else f"output{i}", _dims(p.get_partial_shape()),
                       np.dtype(p.get_element_type().to_dtype()))
            for i, p in enumerate(compiled.outputs)
        ]

    def compute_precision(self) -> str | None:
        """OpenVINO's INFERENCE_PRECISION_HINT of the compiled model: bf16 by default on CPUs with native bf16."""
        try:
            v = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        except Exception:  # noqa: BLE001 - a device without the property
            return None
        return v.get_type_name() if hasattr(v, "get_type_name") else str(v)

    def metadata(self) -> dict[str, str]:
        return dict(self._meta)

    def _request(self) -> Any:
        req = getattr(self._local, "req", None)
        if req is None:
            req = self.compiled.create_infer_request()
            self._local.req = req
            with self._lock:
                self._requests.append(req)
        return req

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        req = self._request()
        t0 = time.perf_counter()
        try:
            req.infer(feeds, share_inputs=True)
        except Exception as e:
            raise BackendError(f"openvino failed to run {self.path.name}: {str(e).splitlines()[0]}") from None
        self.last_timings.total = self.last_timings.compute = time.perf_counter() - t0
        return [req.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]

    def optimal_requests(self) -> int:
        """OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS for the compiled model (1 under the latency hint)."""
        try:
            return max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:
            return 1

    def async_runner(self, requests: int | None = None) -> AsyncRunner:
        """A runner with ``requests`` infer requests of its own (default: OpenVINO's optimal number)."""
        if self._closed:
            raise BackendError(f"openvino session for {self.path.name} is closed")
        return OpenVINOAsyncRunner(self, requests or self.optimal_requests())

    def _close(self) -> None:
        self._requests.clear()
        self._local = threading.local()
        self.compiled = None


class OpenVINOAsyncRunner(AsyncRunner):
    """:class:`AsyncRunner` with ``requests`` OpenVINO infer requests of its own, each driven by one worker
    thread (``InferRequest.infer`` releases the GIL, so the runs overlap each other and the caller).

    Why not ``AsyncInferQueue``: its completion callback runs Python on OpenVINO's executor threads, which
    then own a Python thread state; when the compiled model (or its Core) is later destroyed from Python,
    OpenVINO joins those threads while the destroying thread holds the GIL they need to exit, and the
    process hangs (reproduced with openvino 2026.4 on CPU). Driving requests from Python threads keeps
    Python off OpenVINO's threads and gives the same overlap.
    """

    def __init__(self, session: OpenVINOSession, requests: int = 1) -> None:
        super().__init__(session, requests)
        import queue

        self._n_out = len(session.outputs)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.requests):
            self._idle.put(session.compiled.create_infer_request())

    def _job(self, feeds: dict[str, np.ndarray], fut: Any) -> None:
        req = self._idle.get()
        try:
            fut.started = time.perf_counter()
            req.infer(feeds, share_inputs=True)
            fut.finished = time.perf_counter()
            out = [req.get_output_tensor(i).data.copy() for i in range(self._n_out)]
        except BaseException as e:
            self._idle.put(req)
            self._slots.release()
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            fut.set_exception(BackendError(f"openvino failed to run {self.session.path.name}: {msg}")
                              if isinstance(e, Exception) else e)
            return
        self._idle.put(req)
        self._slots.release()
        fut.set_result(out)

    def _shutdown(self) -> None:
        super()._shutdown()
        while not self._idle.empty():
            self._idle.get()


class OpenVINOBackend(Backend):
    """OpenVINO Runtime for IR (``.xml``) and ONNX files.

    Devices: ``CPU``, ``GPU`` (``GPU.0`` …), ``NPU``, ``AUTO`` (case-insensitive).

    Options:
        hint: "latency" (default) or "throughput" (OpenVINO PERFORMANCE_HINT).
        cache_dir: compiled-model cache (default ``~/.cache/unideploy/openvino``; "" disables it).
        cache_max_mb: size cap of that folder; the oldest compiled blobs beyond it are deleted after each compile
            (default 1024; 0 = no cap). See :func:`prune_cache`.
        threads: inference threads.
        precision: inference precision of float layers, "f32", "bf16" or "f16" (OpenVINO INFERENCE_PRECISION_HINT;
            default: the device's choice, which is bf16 on CPUs with native bf16 support).
    """

    name = "openvino"
    runtime_module = "openvino"
    extra = "openvino"
    suffixes = (".xml", ".onnx")
    default_device = "CPU"

    @classmethod
    def devices(cls) -> list[str]:
        ov = cls.require()
        return list(shared_core(ov).available_devices) + ["AUTO"]

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, **options: Any) -> OpenVINOSession:
        ov = cls.require()
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        check_model_file(path)  # external data must stay inside the model's folder (before the runtime reads)
        dev = (device or "CPU").upper()
        core = shared_core(ov)
        available = list(core.available_devices)
        if dev.split(":")[0] not in ("AUTO", "MULTI", "HETERO") and dev not in available and dev.split(".")[0] not in available:
            raise DeviceError(f"openvino device {device!r} is not available; available: {', '.join(available + ['AUTO'])}")
        hint = str(options.get("hint", "latency")).upper()
        if hint not in ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"):
            raise DeviceError(f"openvino hint must be latency, throughput or cumulative_throughput, got {options['hint']!r}")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if options.get("threads"):
            config["INFERENCE_NUM_THREADS"] = int(options["threads"])
        if options.get("precision"):
            precision = str(options["precision"]).lower().replace("fp", "f")
            if precision not in ("f32", "bf16", "f16"):
                raise DeviceError(f"openvino precision must be f32, bf16 or f16, got {options['precision']!r}")
            config["INFERENCE_PRECISION_HINT"] = precision
        cache = options.get("cache_dir", None)
        cache = default_cache_dir() if cache is None else cache
        if cache:
            Path(cache).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)  # per compile: the Core is shared
        try:
            cache_max_mb = float(options.get("cache_max_mb", 1024) or 0)
        except (TypeError, ValueError):
            raise InputError(f"openvino cache_max_mb must be a number of MB (0 = no cap), got {options['cache_max_mb']!r}") from None
        started = time.time() - 2  # coarse file-system timestamps: a blob written now never looks older than this
        try:
            compiled = core.compile_model(str(path), dev, config)
        except Exception as e:
            raise ModelError(f"{path}: openvino could not compile it for {dev}: {str(e).strip().splitlines()[0]}") from None
        if cache and cache_max_mb > 0:
            prune_cache(cache, int(cache_max_mb * 2**20), keep_since=started)
        meta = {}
        return OpenVINOSession(path, dev, compiled, meta)
