"""OpenVINO backend: CPU / GPU / AUTO devices, latency/throughput hints, compiled-model cache."""

from __future__ import annotations

import html
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.cache import LOCK_NAME, cache_dir, folder_lock
from unideploy.core.errors import BackendError, DeviceError, InputError, ModelError
from unideploy.core.onnx_file import check_external_refs, read_onnx, read_onnx_metadata
from unideploy.core.options import BackendOptions
from unideploy.core.spec import SPEC_KEY
from unideploy.runtime.backends.base import AsyncRunner, Backend, Session, TensorInfo


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def shared_core(ov: Any) -> Any:
    """One ``openvino.Core`` per process, reading weights into memory rather than mapping them.

    Creating and dropping a Core per model, with streams abandoned mid-way, corrupted the heap now and then
    (openvino 2026.4: a SIGSEGV in 9 of 12 runs of 110 create/close cycles with a Core per open; see
    docs/reliability.md and ``benchmarks/ov_teardown.py`` for the runs with one shared Core).

    ``ENABLE_MMAP`` off: by default OpenVINO maps an IR's ``.bin`` and the CPU plugin runs on the mapped weights,
    so a ``.bin`` truncated on disk under a running model kills the process with SIGBUS at its next inference
    (reproduced with plain openvino 2026.4). Read into memory, the loaded model is immune to the file changing.
    """
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            core = ov.Core()
            core.set_property({"ENABLE_MMAP": False})
            _CORE = core
        return _CORE


#: seconds :func:`wait_native_exit` waits at most (per call) for ended threads' OS threads to be gone
NATIVE_EXIT_WAIT = 1.0


def wait_native_exit(threads: Any, timeout: float = NATIVE_EXIT_WAIT) -> int:
    """Wait until the OS threads of the ended Python ``threads`` are gone (Linux); returns how many were waited for.

    ``Thread.join()`` returns when the Python side of a thread is done, before its OS thread has run the native
    thread-exit work of the libraries it called (C++ ``thread_local`` destructors, oneTBB's per-thread cleanup).
    The session lets threads that ran OpenVINO calls (made or ran an infer request) be fully gone before the
    compiled model and its Core are released, so no exit work of theirs can meet freed objects. This order was
    suspected to be the cause of the heap corruption in docs/reliability.md "Teardown" (a new Core per open(),
    stream worker threads ending at close()); valgrind with that order forced found no bad access, so it is kept
    as a safe order, not a shown fix. A thread's ``/proc/self/task/<tid>`` entry disappears only after all of that
    has run; this waits for the entries of all ``threads`` together for at most ``timeout`` seconds. Threads still
    alive are skipped (they end after the release; the shared Core keeps the executors they use alive). Elsewhere
    than Linux there is nothing to wait on and this returns 0.
    """
    ended = [t.native_id for t in threads if not t.is_alive() and t.native_id is not None]
    if not ended or not os.path.isdir("/proc/self/task"):
        return 0
    deadline = time.monotonic() + timeout
    for tid in ended:
        while os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < deadline:
            time.sleep(0.001)
    return len(ended)


def default_cache_dir() -> Path:
    return cache_dir("openvino")


def prune_cache(cache: str | Path, max_bytes: int, keep_since: float | None = None) -> list[Path]:
    """Delete the oldest files of a compiled-model cache folder until it holds at most ``max_bytes``.

    OpenVINO never evicts: every model (and every device/precision/hint) compiled with a cache folder leaves a
    blob there (13 MB for YOLOv8n-640), and a machine that exports many models fills its disk. Oldest is by
    modification time, i.e. when the blob was compiled (OpenVINO does not say which blob a cache hit read, so
    use is not tracked); a pruned model is simply compiled again. Files modified at or after ``keep_since``
    (this process's own compile) are never deleted, nor the folder's lock file. The backend prunes while it holds
    the folder lock (:func:`unideploy.core.cache.folder_lock`), so no other unideploy process is reading a blob
    then. Returns the deleted paths.
    """
    files = []
    for f in Path(cache).iterdir():
        try:
            st = f.stat()
        except OSError:  # removed by another process meanwhile
            continue
        if stat.S_ISREG(st.st_mode) and f.name != LOCK_NAME:
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


_OV_WHERE = re.compile(r"^(Exception from|Check .* failed at) \S+:\d+:?$")


def ov_message(e: BaseException) -> str:
    """The informative line of an OpenVINO exception: its text starts with a line naming the C++ source file and
    line ("Exception from src/inference/src/cpp/core.cpp:117:"), which says nothing to a user on its own."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not _OV_WHERE.match(ln)]
    return (useful or lines or [type(e).__name__])[0]


def read_openvino_metadata(xml_path: str | Path) -> dict[str, str]:
    """Ultralytics ``metadata.yaml`` beside an IR, plus a unideploy spec stored in its ``rt_info``.

    Raises:
        ModelError: the ``metadata.yaml`` is not a YAML mapping.
    """
    xml_path = Path(xml_path)
    out: dict[str, str] = {}
    yml = xml_path.parent / "metadata.yaml"
    if yml.is_file():
        import yaml

        try:
            # libyaml's loader where PyYAML has it: ~7x faster than the pure-Python one (~6 ms of each open here)
            data = yaml.load(yml.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        except yaml.YAMLError as e:
            raise ModelError(f"{yml}: expected Ultralytics metadata YAML, could not parse it ({e})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{yml}: expected Ultralytics metadata YAML (a mapping), got a {type(data).__name__}")
        out.update({str(k): (v if isinstance(v, str) else repr(v)) for k, v in data.items()})
    text = xml_path.read_text(errors="replace")
    i = text.rfind("<rt_info>")
    if i >= 0:
        m = re.search(r'<%s\s+value="([^"]*)"' % SPEC_KEY, text[i:])
        if m:
            out[SPEC_KEY] = html.unescape(m.group(1))
    return out


def _dims(pshape: Any) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in pshape)


def _infos(ports: Any, prefix: str = "") -> list[TensorInfo]:
    return [TensorInfo(p.get_any_name() if p.get_names() else f"{prefix}{i}", _dims(p.get_partial_shape()),
                       np.dtype(p.get_element_type().to_dtype())) for i, p in enumerate(ports)]


def _compute_precision(core: Any, device: str, config: dict[str, Any]) -> str | None:
    """The precision float layers will run in: the hint asked for, else the device's default (None: unknown)."""
    if "INFERENCE_PRECISION_HINT" in config:
        return str(config["INFERENCE_PRECISION_HINT"])
    try:
        v = core.get_property(device, "INFERENCE_PRECISION_HINT")
    except Exception:  # noqa: BLE001 - AUTO / devices without the property
        return None
    return v.get_type_name() if hasattr(v, "get_type_name") else str(v)


class OpenVINOSession(Session):
    """A model read by OpenVINO and compiled on first use: :meth:`fuse_preprocess` (called by ``open_model``
    before any run) may first add the preprocessing steps, so the model is compiled once, with them."""

    backend = "openvino"
    thread_safe = True  # one infer request per thread, created on first use

    def __init__(self, path: Path, device: str, model: Any, meta: dict[str, str], compile_args: dict[str, Any]):
        super().__init__(path, device)
        self._model: Any = model
        self._compiled: Any = None
        self._compile_args = compile_args  # core, config, cache folder, cap, in_model_preprocess
        self._compile_lock = threading.Lock()
        self._meta = meta
        self._local = threading.local()
        self._requests: list[Any] = []
        self._threads: set[threading.Thread] = set()  # threads that made or ran an infer request (see _close)
        self.inputs = _infos(model.inputs)
        self.outputs = _infos(model.outputs, "output")

    @property
    def compiled(self) -> Any:
        """The ``openvino.CompiledModel`` (compiled on first access).

        Raises:
            ModelError: OpenVINO could not compile the model for the device.
        """
        if self._compiled is None:
            with self._compile_lock:
                if self._compiled is None:
                    self._compiled = self._compile()
        return self._compiled

    @compiled.setter
    def compiled(self, value: Any) -> None:
        self._compiled = value

    def _compile(self) -> Any:
        if self._closed:
            raise BackendError(f"openvino session for {self.path.name} is closed")
        a = self._compile_args
        if not a["cache"]:
            compiled = self._compile_once()
        else:
            # One unideploy compile at a time per cache folder, across processes: OpenVINO writes a blob in place
            # under its final name and maps blobs it reads, with no lock of its own (docs/reliability.md "A cache shared by processes").
            with folder_lock(a["cache"]):
                started = time.time() - 2  # coarse file-system timestamps: a blob written now is never older
                try:
                    compiled = self._compile_once()
                except ModelError:
                    # a blob deleted between OpenVINO's exists() and its read (another program pruning the
                    # folder) fails the compile: once more, now a cache miss that compiles and writes it anew
                    compiled = self._compile_once()
                if a["cache_max_mb"] > 0:
                    prune_cache(a["cache"], int(a["cache_max_mb"] * 2**20), keep_since=started)
        self._model = None  # the compiled model holds what it needs
        return compiled

    def _compile_once(self) -> Any:
        a = self._compile_args
        try:
            return a["core"].compile_model(self._model, self.device, a["config"])
        except Exception as e:
            raise ModelError(f"{self.path}: openvino could not compile it for {self.device}: {ov_message(e)}") from None

    def fuse_preprocess(self, spec: Any) -> Any:
        """Move ``spec``'s preprocessing after the resize into the model (PrePostProcessor), before it is compiled.

        Returns:
            The spec for the fused model (``in_model="openvino"``, uint8 NHWC BGR input), or None where the option
            ``in_model_preprocess`` is off, the model was already compiled, or :func:`fusable` refuses it.
        """
        from unideploy.runtime.backends.openvino_ppp import add_preprocessing, fusable, in_model_spec

        with self._compile_lock:
            if not self._compile_args["in_model_preprocess"] or self._compiled is not None or self._model is None:
                return None
            if fusable(self._model, spec) is not None:
                return None
            self._model = add_preprocessing(self._compile_args["ov"], self._model, spec)
            self.inputs = _infos(self._model.inputs)
        return in_model_spec(spec)

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
                self._threads.add(threading.current_thread())  # see _wait_ended_threads
        return req

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        req = self._request()
        t0 = time.perf_counter()
        try:
            req.infer(feeds, share_inputs=True)
        except Exception as e:
            raise BackendError(f"openvino failed to run {self.path.name}: {ov_message(e)}") from None
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

    def _used_by(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.add(thread)

    def _wait_ended_threads(self) -> int:
        """Forget the threads that used this session and have ended, once their OS threads are gone."""
        with self._lock:
            ended = [t for t in self._threads if not t.is_alive()]
            self._threads.difference_update(ended)
        return wait_native_exit(ended)

    def _close(self) -> None:
        self._wait_ended_threads()  # before the compiled model (and the Core, where not shared) is dropped
        self._requests.clear()
        self._local = threading.local()
        self._compiled = self._model = None


class OpenVINOAsyncRunner(AsyncRunner):
    """:class:`AsyncRunner` with ``requests`` OpenVINO infer requests of its own, each driven by one worker
    thread (``InferRequest.infer`` releases the GIL, so the runs overlap each other and the caller).

    Why not ``AsyncInferQueue``: its completion callback runs Python on OpenVINO's executor threads, which
    then own a Python thread state; when the compiled model (or its Core) is later destroyed from Python,
    OpenVINO joins those threads while the destroying thread holds the GIL they need to exit, and the
    process hangs (reproduced with openvino 2026.4 on CPU). Driving requests from Python threads keeps
    Python off OpenVINO's threads and gives the same overlap.
    """

    session: OpenVINOSession

    def __init__(self, session: OpenVINOSession, requests: int = 1) -> None:
        super().__init__(session, requests)
        import queue

        self._n_out = len(session.outputs)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.requests):
            self._idle.put(session.compiled.create_infer_request())

    def _job(self, feeds: dict[str, np.ndarray], fut: Any) -> None:
        self.session._used_by(threading.current_thread())  # its OS thread is waited for at shutdown
        req = self._idle.get()
        try:
            fut.started = time.perf_counter()
            req.infer(feeds, share_inputs=True)
            fut.finished = time.perf_counter()
            out = [req.get_output_tensor(i).data.copy() for i in range(self._n_out)]
        except BaseException as e:
            self._idle.put(req)
            self._slots.release()
            fut.set_exception(BackendError(f"openvino failed to run {self.session.path.name}: {ov_message(e)}")
                              if isinstance(e, Exception) else e)
            return
        self._idle.put(req)
        self._slots.release()
        fut.set_result(out)

    def _shutdown(self) -> None:
        super()._shutdown()  # joins the worker threads (Python side)
        while not self._idle.empty():
            self._idle.get()
        self.session._wait_ended_threads()  # and their OS threads: see wait_native_exit


@dataclass(frozen=True)
class OpenVINOOptions(BackendOptions):
    """Options of :class:`OpenVINOBackend` (see its docstring)."""

    hint: str = "latency"
    cache_dir: str | os.PathLike | None = None
    cache_max_mb: float | str | None = 1024
    threads: int | None = None
    precision: str | None = None
    in_model_preprocess: bool | None = False


class OpenVINOBackend(Backend):
    """OpenVINO Runtime for IR (``.xml``) and ONNX files.

    Devices: ``CPU``, ``GPU`` (``GPU.0`` …), ``NPU``, ``AUTO`` (case-insensitive).

    Options:
        hint: "latency" (default) or "throughput" (OpenVINO PERFORMANCE_HINT).
        cache_dir: compiled-model cache (default ``~/.cache/unideploy/openvino``; "" disables it). Processes may
            share it: each compile into it holds the folder's lock (:func:`unideploy.core.cache.folder_lock`).
        cache_max_mb: size cap of that folder; the oldest compiled blobs beyond it are deleted after each compile
            (default 1024; 0 = no cap). See :func:`prune_cache`.
        threads: inference threads.
        precision: inference precision of float layers, "f32", "bf16" or "f16" (OpenVINO INFERENCE_PRECISION_HINT;
            default: the device's choice, which is bf16 on CPUs with native bf16 support).
        in_model_preprocess: let :func:`~unideploy.runtime.open.open_model` move the preprocessing after the
            resize (uint8 -> float, BGR -> RGB, NHWC -> NCHW, scale, mean/std) into the model with OpenVINO's
            PrePostProcessor, so the host feeds the letterboxed uint8 image. False (default): never (numpy does
            it, and predictions stay bit-identical to Ultralytics' OpenVINO path at f32); True: always; None: only
            where the device computes float layers in f32. The fused model reads NHWC and OpenVINO's CPU plugin then
            sums the first convolution in another order: at f32 boxes move by up to 1e-4 px and scores by 1e-6 on
            the demo model (not bit-identical); under bf16 (this backend's CPU default on CPUs with native bf16)
            scores move by up to ~2e-2, as much as bf16 itself moves them from f32; no speed-up was measured on the
            2-core VM, so it is opt-in. See :mod:`unideploy.runtime.backends.openvino_ppp`.

    The model is read at ``open`` and compiled on first use (or after ``fuse_preprocess``).
    """

    name = "openvino"
    runtime_module = "openvino"
    extra = "openvino"
    suffixes = (".xml", ".onnx")
    default_device = "CPU"
    Options = OpenVINOOptions

    @classmethod
    def read_metadata(cls, path: str | Path) -> dict[str, str]:
        """An IR's ``rt_info`` spec and Ultralytics ``metadata.yaml``; an ONNX file's ``metadata_props``."""
        p = Path(path)
        if p.suffix.lower() == ".onnx":
            return read_onnx_metadata(p)
        return read_openvino_metadata(p) if p.suffix.lower() == ".xml" else {}

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
        opts: OpenVINOOptions = cls.parse_options(options)
        if path.suffix.lower() == ".onnx":  # one read and parse: metadata and external-data references
            onnx = read_onnx(path).require_graph()
            check_external_refs(path, onnx.external_refs)  # external data must stay inside the model's folder
            meta = dict(onnx.metadata)
        else:
            meta = read_openvino_metadata(path) if path.suffix.lower() == ".xml" else {}
        dev = (device or "CPU").upper()
        core = shared_core(ov)
        available = list(core.available_devices)
        if dev.split(":")[0] not in ("AUTO", "MULTI", "HETERO") and dev not in available and dev.split(".")[0] not in available:
            raise DeviceError(f"openvino device {device!r} is not available; available: {', '.join(available + ['AUTO'])}")
        hint = str(opts.hint).upper()
        if hint not in ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"):
            raise DeviceError(f"openvino hint must be latency, throughput or cumulative_throughput, got {opts.hint!r}")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if opts.threads:
            config["INFERENCE_NUM_THREADS"] = int(opts.threads)
        if opts.precision:
            precision = str(opts.precision).lower().replace("fp", "f")
            if precision not in ("f32", "bf16", "f16"):
                raise DeviceError(f"openvino precision must be f32, bf16 or f16, got {opts.precision!r}")
            config["INFERENCE_PRECISION_HINT"] = precision
        cache = default_cache_dir() if opts.cache_dir is None else opts.cache_dir
        if cache:
            Path(cache).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)  # per compile: the Core is shared
        try:
            cache_max_mb = float(opts.cache_max_mb or 0)
        except (TypeError, ValueError):
            raise InputError(f"openvino cache_max_mb must be a number of MB (0 = no cap), got {opts.cache_max_mb!r}") from None
        fuse = opts.in_model_preprocess
        if fuse is not None and not isinstance(fuse, bool):
            raise InputError(f"openvino in_model_preprocess must be True, False or None (auto), got {fuse!r}")
        if fuse is None:
            fuse = _compute_precision(core, dev, config) == "f32"
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise ModelError(f"{path}: openvino could not read it: {ov_message(e)}") from None
        session = OpenVINOSession(path, dev, model, meta, {
            "ov": ov, "core": core, "config": config, "cache": cache, "cache_max_mb": cache_max_mb,
            "in_model_preprocess": fuse})
        session.file_metadata = dict(meta)
        return session
