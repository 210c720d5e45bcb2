"""The backend contract: ``Backend.open(path, device) -> Session``; ``Session.run(feeds) -> outputs``.

A backend is one small class per runtime (Polygraphy's runners): nothing touches the runtime or the
device before ``open``; a session checks feeds against its declared inputs before the runtime sees
them, and releases everything on ``close`` (sessions are context managers). Backends that can split
a run into host->device copy, compute and device->host copy report it in ``Session.last_timings``;
the benchmark owns the clock, backends only expose the hooks.

Adding a backend = one module with a :class:`Backend` subclass + one line in ``registry.py``.

Each backend declares its options as a dataclass (``Backend.Options``, a :class:`BackendOptions`); ``open()``
validates what it is given once with :meth:`Backend.parse_options`, so an unknown key is an error listing the
valid ones. Each backend also reads its own file's metadata (:meth:`Backend.read_metadata`: ONNX
``metadata_props``, OpenVINO ``rt_info``, a torch checkpoint's) for the spec; a backend that reads the file
while opening it anyway keeps what it read in ``Session.file_metadata`` so the file is parsed once.

Asynchronous runs (optional hooks, used by the pipelined ``Predictor.stream`` and by ``unideploy bench
--mode async``): ``Session.async_runner(requests)`` returns an :class:`AsyncRunner` whose ``submit(feeds)``
returns a ``concurrent.futures.Future`` of the outputs and blocks while ``requests`` runs are already in
flight; ``Session.optimal_requests()`` is the runtime's suggestion for ``requests``. The default runner
calls ``Session.run`` from ``requests`` worker threads (serialised by the session lock unless the session
is ``thread_safe``, so several ONNX Runtime runs can be in flight), which already overlaps inference with
the caller's work; a backend overrides ``async_runner`` where it can do better (OpenVINO: a pool of its
own infer requests, one per in-flight run; see ``OpenVINOAsyncRunner`` for why not ``AsyncInferQueue``).
Each future carries ``started`` / ``finished`` (``time.perf_counter()`` stamps of the run itself, queueing
excluded) for latency statistics.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from unideploy.core.errors import BackendError, BackendUnavailableError, InputError
from unideploy.core.options import BackendOptions

__all__ = ["TensorInfo", "Timings", "Session", "AsyncRunner", "Backend", "BackendOptions", "SHARED_OPTIONS"]

#: options any caller may give every backend (the CLI's ``--threads``, ``--precision``, ``--trust-pickle``);
#: a backend that does not declare one ignores it, any other unknown key is an error; ``in_model_preprocess``:
#: whether a backend that can run the preprocessing inside the model (OpenVINO) may do so; ``hint``: "latency" or
#: "throughput" where the runtime has such a setting (OpenVINO, ONNX Runtime's CPU provider)
SHARED_OPTIONS = frozenset({"threads", "precision", "trust_pickle", "in_model_preprocess", "hint"})


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints; None for a dynamic dimension) and numpy dtype of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"({dims}) {np.dtype(self.dtype).name}"

    def hw_axes(self) -> tuple[int, int]:
        """Axes of height and width in a 4-D image input: (1, 2) for NHWC (1 or 3 channels last, not first),
        else (2, 3) for NCHW."""
        s = self.shape
        return (1, 2) if len(s) == 4 and s[3] in (1, 3) and s[1] not in (1, 3) else (2, 3)

    def image_hw(self) -> tuple[int | None, int | None]:
        """(height, width) of a 4-D image input (None where dynamic); (None, None) for another rank."""
        if len(self.shape) != 4:
            return None, None
        a, b = self.hw_axes()
        return self.shape[a], self.shape[b]

    def accepts(self, arr: np.ndarray) -> bool:
        if arr.dtype != self.dtype or arr.ndim != len(self.shape):
            return False
        return all(d is None or d == a for d, a in zip(self.shape, arr.shape))


@dataclass
class Timings:
    """Seconds spent in the last ``run``; None where the backend cannot separate a phase."""

    h2d: float | None = None
    compute: float | None = None
    d2h: float | None = None
    total: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class Session(ABC):
    """An open model on one device. Use as a context manager; ``close`` is idempotent.

    Subclasses set ``inputs`` / ``outputs`` in ``__init__`` and implement ``_run`` and ``_close``.
    """

    backend: ClassVar[str] = "?"
    #: True when ``run`` may be called from several threads at once on this object.
    thread_safe: ClassVar[bool] = False

    def __init__(self, path: Path, device: str) -> None:
        self.path = Path(path)
        self.device = device
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []
        self.last_timings = Timings()
        #: the file's metadata when the backend read it while opening (as :meth:`Backend.read_metadata` returns
        #: it), so :func:`~unideploy.runtime.open.open_model` need not read the file again; None when it did not
        self.file_metadata: dict[str, str] | None = None
        self._closed = False
        self._lock = threading.Lock()

    # -- contract ---------------------------------------------------------------------------
    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Execute on validated feeds; return outputs in ``self.outputs`` order."""

    @abstractmethod
    def _close(self) -> None:
        """Release runtime objects and device memory."""

    def metadata(self) -> dict[str, str]:
        """Key/value metadata the runtime exposes (may be empty)."""
        return {}

    def compute_precision(self) -> str | None:
        """The element type the runtime computes float layers in ("f32", "bf16", "f16"), where it chooses one
        itself and says so; None where the model file's precision is what runs."""
        return None

    def fuse_preprocess(self, spec: Any) -> Any:
        """Hook: move ``spec``'s preprocessing after the resize into the model, before the first run.

        Returns the spec the adapter must use then (``in_model`` set, uint8 input), or None where this session
        leaves it to the host (the default). :func:`~unideploy.runtime.open.open_model` calls it once.
        """
        return None

    # -- public -----------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray] | np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the model.

        Args:
            feeds: {input name: array}, or one array for a single-input model, or a list in input order.

        Returns:
            One numpy array per output, in ``self.outputs`` order.

        Raises:
            InputError: a feed is missing, unknown, or has the wrong shape or dtype.
        """
        if self._closed:
            raise BackendError(f"{self.backend} session for {self.path.name} is closed")
        feeds = self.check_feeds(feeds)
        if self.thread_safe:
            return self._run(feeds)
        with self._lock:
            return self._run(feeds)

    def check_feeds(self, feeds: dict[str, np.ndarray] | np.ndarray | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(feeds, np.ndarray):
            feeds = [feeds]
        if not isinstance(feeds, dict):
            feeds = list(feeds)
            if len(feeds) != len(self.inputs):
                raise InputError(f"model expects {len(self.inputs)} input(s) {[i.name for i in self.inputs]}, got {len(feeds)}")
            feeds = {i.name: a for i, a in zip(self.inputs, feeds)}
        expected = {i.name: i for i in self.inputs}
        unknown = sorted(set(feeds) - set(expected))
        missing = sorted(set(expected) - set(feeds))
        if unknown or missing:
            raise InputError(f"model inputs are {sorted(expected)}; missing {missing}, unknown {unknown}")
        for name, arr in feeds.items():
            info = expected[name]
            if not isinstance(arr, np.ndarray) or not info.accepts(arr):
                got = f"{tuple(arr.shape)} {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise InputError(f"input '{name}' expects {info.describe()}, got {got}")
        return feeds

    def optimal_requests(self) -> int:
        """How many runs to keep in flight for throughput (default 2: the next batch is queued while one runs;
        runtimes that know better override it)."""
        return 2

    def async_runner(self, requests: int | None = None) -> AsyncRunner:
        """A runner that keeps up to ``requests`` runs of this session in flight (see :class:`AsyncRunner`).

        Example:
            >>> with session.async_runner(2) as runner:  # doctest: +SKIP
            ...     futures = [runner.submit(x) for x in batches]
            ...     outputs = [f.result() for f in futures]
        """
        return AsyncRunner(self, requests or self.optimal_requests())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; explicit close is the contract
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path.name} on {self.device}>"


class AsyncRunner:
    """Keeps up to ``requests`` runs of a session in flight; ``submit`` returns a Future of the outputs.

    This default implementation calls ``session.run`` from ``requests`` worker threads (named
    ``unideploy-infer``). ``submit`` checks the feeds first (raising InputError in the caller) and blocks
    while all requests are busy. Each returned future has ``started`` and ``finished`` attributes
    (``time.perf_counter()`` stamps around the run). ``close`` waits for the runs in flight and is idempotent.

    Args:
        session: an open session.
        requests: runs in flight at most (>= 1).

    Example:
        >>> with session.async_runner(2) as runner:  # doctest: +SKIP
        ...     fut = runner.submit(x)
        ...     outputs = fut.result()
    """

    def __init__(self, session: Session, requests: int = 1) -> None:
        if int(requests) < 1:
            raise InputError(f"requests must be a positive integer, got {requests}")
        self.session = session
        self.requests = int(requests)
        self._slots = threading.BoundedSemaphore(self.requests)
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None

    def _start(self, feeds: dict[str, np.ndarray], fut: Future) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.requests, thread_name_prefix="unideploy-infer")
        self._pool.submit(self._job, feeds, fut)

    def _job(self, feeds: dict[str, np.ndarray], fut: Future) -> None:
        try:
            fut.started = time.perf_counter()  # type: ignore[attr-defined]
            out = self.session.run(feeds)
            fut.finished = time.perf_counter()  # type: ignore[attr-defined]
        except BaseException as e:  # delivered to whoever waits on the future
            self._slots.release()
            fut.set_exception(e)
            return
        self._slots.release()
        fut.set_result(out)

    def submit(self, feeds: dict[str, np.ndarray] | np.ndarray | Sequence[np.ndarray]) -> Future:
        """Start one run; blocks while ``requests`` runs are in flight. Returns a Future of the outputs."""
        if self._closed:
            raise BackendError(f"async runner of {self.session!r} is closed")
        feeds = self.session.check_feeds(feeds)
        self._slots.acquire()
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        try:
            self._start(feeds, fut)
        except BaseException:
            self._slots.release()
            raise
        return fut

    def wait_all(self) -> None:
        """Block until no run is in flight."""
        for _ in range(self.requests):
            self._slots.acquire()
        for _ in range(self.requests):
            self._slots.release()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self) -> None:
        """Wait for the runs in flight, then release the workers."""
        if not self._closed:
            self._closed = True
            self.wait_all()
            self._shutdown()

    def __enter__(self) -> AsyncRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Backend(ABC):
    """A runtime. Subclasses are registered by name in ``registry.py`` and imported lazily."""

    name: ClassVar[str]
    #: importable module that must be present for this backend to work
    runtime_module: ClassVar[str]
    #: pip extra that installs the runtime
    extra: ClassVar[str]
    #: model file suffixes the backend opens
    suffixes: ClassVar[tuple[str, ...]]
    default_device: ClassVar[str] = "cpu"
    #: the options ``open()`` takes: a frozen dataclass with defaults (a subclass declares its own)
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    @classmethod
    def read_metadata(cls, path: str | Path) -> dict[str, str]:
        """The model file's own metadata as flat strings (Ultralytics keys and/or a ``unideploy`` spec under
        ``"unideploy"``), read without loading the model or importing the runtime; {} where the format has none.

        Raises:
            ModelError: the file is not of the backend's format or cannot be read.
        """
        return {}

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Names of the options this backend declares."""
        return tuple(f.name for f in dataclass_fields(cls.Options))

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | None) -> Any:
        """``options`` as this backend's :attr:`Options`, validated once.

        Keys of :data:`SHARED_OPTIONS` the backend does not declare are dropped; any other unknown key is an error.

        Raises:
            OptionError: an unknown option (the message lists the valid ones).

        Example:
            >>> from unideploy.runtime.backends.registry import get_backend
            >>> get_backend("onnxruntime").parse_options({"threads": 2}).threads
            2
        """
        declared = set(cls.option_names())
        given = {k: v for k, v in dict(options or {}).items() if k in declared or k not in SHARED_OPTIONS}
        return cls.Options.from_mapping(given, cls.name)

    @classmethod
    def available(cls) -> bool:
        """True when the runtime can be imported (checked without importing it)."""
        try:
            return importlib.util.find_spec(cls.runtime_module) is not None
        except (ImportError, ValueError):
            return False

    @classmethod
    def require(cls) -> Any:
        """Import and return the runtime module, or raise BackendUnavailableError naming the extra."""
        if not cls.available():
            raise BackendUnavailableError(
                f"backend '{cls.name}' needs the Python module '{cls.runtime_module}', which is not installed; "
                f"install it with: pip install 'unideploy[{cls.extra}]'"
            )
        try:
            return importlib.import_module(cls.runtime_module)
        except ImportError as e:
            raise BackendUnavailableError(f"backend '{cls.name}': importing '{cls.runtime_module}' failed: {e}") from None

    @classmethod
    def devices(cls) -> list[str]:
        """Devices this machine offers for the backend (imports the runtime)."""
        return [cls.default_device]

    @classmethod
    @abstractmethod
    def open(cls, path: str | Path, device: str | None = None, **options: Any) -> Session:
        """Load ``path`` on ``device`` and return an open session."""
