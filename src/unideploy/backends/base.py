"""The backend contract: ``Backend.open(path, device) -> Session``; ``Session.run(feeds) -> outputs``.

A backend is one small class per runtime (Polygraphy's runners): nothing touches the runtime or the
device before ``open``; a session checks feeds against its declared inputs before the runtime sees
them, and releases everything on ``close`` (sessions are context managers). Backends that can split
a run into host->device copy, compute and device->host copy report it in ``Session.last_timings``;
the benchmark owns the clock, backends only expose the hooks.

Adding a backend = one module with a :class:`Backend` subclass + one line in ``registry.py``.
"""

from __future__ import annotations

import importlib.util
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import BackendError, BackendUnavailableError, InputError


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints; None for a dynamic dimension) and numpy dtype of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"({dims}) {np.dtype(self.dtype).name}"

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
