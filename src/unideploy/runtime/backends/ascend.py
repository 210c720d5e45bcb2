"""Huawei Ascend backend on ais_bench: ``InferSession`` for offline (``.om``) models.

One :class:`InferSession` per device, each created, used and freed in its own worker thread (ACL binds a
context to the thread that made it). Several devices (``device="0,1"``) serve concurrent callers in
parallel, and a dynamic-batch model splits one large batch across them.

Model modes (ais_bench ``infer(mode=...)``): ``static``, ``dymbatch`` (``--dynamic_batch_size`` gears),
``dymhw`` (``--dynamic_image_size`` gears), ``dymdims`` and ``dymshape`` (with ``custom_sizes``: bytes to
reserve per output). The mode and the gears come from the sidecar spec that ``unideploy export --to om``
writes beside the OM file (``extra.om``), else from the declared input shapes; ``mode=`` overrides.
A batch that is not a gear is zero-padded up to the next gear and the outputs are cut back.

An OM converted with AIPP (``export --to om --option aipp=true``) does the preprocessing after the letterbox on
the NPU: the sidecar spec says ``in_model="aipp"`` and the backend is fed the letterboxed uint8 NHWC BGR image.

Timings: ``summary()`` execution times give ``last_timings.compute``, ais_bench's ``MemorySummary``
host-to-device / device-to-host copy times give ``h2d`` / ``d2h`` (all reported in milliseconds by ais_bench,
stored in seconds here).

Example:
    >>> import unideploy
    >>> with unideploy.load("yolov8n.om", backend="ascend", device="0,1") as predictor:  # doctest: +SKIP
    ...     dets = predictor("bus.jpg")
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from unideploy.core.errors import BackendError, DeviceError, InputError, ModelError
from unideploy.core.options import BackendOptions
from unideploy.runtime.backends.base import Backend, Session, TensorInfo

MODES = ("static", "dymbatch", "dymhw", "dymdims", "dymshape")

#: aclruntime.dtype member name -> numpy dtype
AIS_DTYPES = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16, "uint32": np.uint32,
              "int32": np.int32, "uint64": np.uint64, "int64": np.int64, "float16": np.float16,
              "float32": np.float32, "float": np.float32, "double64": np.float64, "double": np.float64, "bool": np.bool_}

#: default bytes reserved per output in dymshape mode when neither the spec nor the option gives a size
DEFAULT_CUSTOM_SIZE = 64 << 20


def parse_npu_devices(device: str | int | Sequence[Any] | None) -> list[int]:
    """Device ids from ``None`` (0), ``3``, ``"1"``, ``"npu:1"``, ``"ascend:0"``, ``"0,1"`` or a list.

    Raises:
        DeviceError: anything else (the message shows the accepted forms).

    Example:
        >>> parse_npu_devices("npu:0,npu:1")
        [0, 1]
    """
    if device is None or (isinstance(device, str) and not device.strip()):
        return [0]
    items = device if isinstance(device, (list, tuple)) else str(device).split(",")
    ids: list[int] = []
    for item in items:
        text = str(item).strip().lower()
        kind, sep, idx = text.rpartition(":")
        if sep and kind not in ("npu", "ascend", "acl"):
            idx = ""
        if not idx.isdigit():
            raise DeviceError(f"Ascend device must be an id like 0, npu:0 or a list 0,1; got {device!r}")
        if int(idx) in ids:
            raise DeviceError(f"Ascend device {idx} listed twice in {device!r}")
        ids.append(int(idx))
    return ids


def om_info(path: Path) -> dict[str, Any]:
    """``extra.om`` of the sidecar spec beside an OM file (what ATC was told), or {}."""
    from unideploy.core.spec import sidecar_paths

    for side in sidecar_paths(path):
        if side.is_file():
            try:
                d = json.loads(side.read_text())
            except (OSError, ValueError):
                return {}
            om = (d.get("extra") or {}).get("om")
            return om if isinstance(om, dict) else {}
    return {}


def aipp_spec(path: Path, spec: Any) -> Any:
    """The spec for an OM built with AIPP (``export --to om --option aipp=true`` records it under ``extra.om.aipp``):
    uint8 NHWC BGR input, ``in_model="aipp"`` (see :mod:`unideploy.runtime.backends.in_model`); None when the OM
    has no AIPP or the spec already says so. Both Ascend backends answer ``fuse_preprocess`` with it."""
    from unideploy.runtime.backends.in_model import in_model_spec

    if not om_info(path).get("aipp") or spec.in_model == "aipp":
        return None
    return in_model_spec(spec, "aipp", "bgr")


def next_gear(n: int, gears: Sequence[int]) -> int | None:
    """Smallest gear >= n, or None when n is above every gear."""
    fit = [g for g in sorted(gears) if g >= n]
    return fit[0] if fit else None


class DeviceWorker:
    """A thread that owns one device's runtime objects: everything for that device runs in it.

    ``call(fn, *args)`` runs ``fn`` in the thread and returns its result (re-raising its exception);
    ``stop(final)`` runs ``final`` in the thread and ends it.
    """

    def __init__(self, name: str) -> None:
        self._q: queue.Queue[tuple[Callable[..., Any], tuple, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            fn, args, fut = job
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # delivered to the caller
                fut.set_exception(e)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        self._q.put((fn, args, fut))
        return fut

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.submit(fn, *args).result()

    def stop(self, final: Callable[[], Any] | None = None) -> None:
        try:
            if final is not None and self._thread.is_alive():
                self.call(final)
        finally:
            self._q.put(None)
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=30)


class DevicePool:
    """Hands out device slots (index into the workers) to concurrent callers; one caller per device at a time."""

    def __init__(self, n: int) -> None:
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(n):
            self._free.put(i)

    def acquire(self) -> int:
        return self._free.get()

    def release(self, i: int) -> None:
        self._free.put(i)


def _err(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


class _AisDevice:
    """Lives in one DeviceWorker thread: an ais_bench InferSession on one device."""

    def __init__(self, interface: Any, device_id: int, path: Path, options: AscendOptions) -> None:
        self.interface = interface
        self.device_id = device_id
        try:
            self.session = interface.InferSession(device_id, str(path), acl_json_path=options.acl_json_path,
                                                  debug=bool(options.debug), loop=1)
        except Exception as e:
            msg = _err(e)
            if re.search(r"set ?device|device ?id|107001", msg, re.IGNORECASE):  # aclrtSetDevice's error
                raise DeviceError(f"ais_bench could not open Ascend device {device_id} for {path.name}: {msg}") from None
            raise ModelError(f"{path}: ais_bench could not load it as an OM model on device {device_id}: {msg}") from None
        self.freed = False

    def describe(self) -> tuple[list[Any], list[Any]]:
        return list(self.session.get_inputs()), list(self.session.get_outputs())

    def _exec_times(self) -> list[float]:
        s = self.session
        res = s.summary() if hasattr(s, "summary") else s.sumary()  # older ais_bench spells it "sumary"
        return list(getattr(res, "exec_time_list", res) or [])

    def _memory_times(self) -> tuple[list[float], list[float]]:
        ms = getattr(self.interface, "MemorySummary", None)
        if ms is None:
            return [], []
        h2d = getattr(ms, "get_h2d_time_list", None) or getattr(ms, "get_H2D_time_list", None)
        d2h = getattr(ms, "get_d2h_time_list", None) or getattr(ms, "get_D2H_time_list", None)
        return (list(h2d()) if h2d else []), (list(d2h()) if d2h else [])

    def infer(self, arrays: list[np.ndarray], mode: str, custom_sizes: Any) -> tuple[list[np.ndarray], dict[str, float | None]]:
        n_exec = len(self._exec_times())
        h0, d0 = self._memory_times()
        t0 = time.perf_counter()
        try:
            if mode == "dymshape":
                outs = self.session.infer(arrays, mode=mode, custom_sizes=custom_sizes)
            else:
                outs = self.session.infer(arrays, mode=mode)
        except Exception as e:
            raise BackendError(f"ais_bench infer (mode={mode}) failed on device {self.device_id}: {_err(e)}") from None
        total = time.perf_counter() - t0
        ex = self._exec_times()[n_exec:]
        h1, d1 = self._memory_times()
        times: dict[str, float | None] = {
            "compute": sum(ex) / 1e3 if ex else None,
            "h2d": sum(h1[len(h0):]) / 1e3 if len(h1) > len(h0) else None,
            "d2h": sum(d1[len(d0):]) / 1e3 if len(d1) > len(d0) else None,
            "total": total,
        }
        return [np.asarray(o) for o in outs], times

    def free(self) -> None:
        if not self.freed:
            self.freed = True
            self.session.free_resource()


class AscendSession(Session):
    """An OM model on one or more Ascend devices through ais_bench; see :class:`AscendBackend`."""

    backend = "ascend"
    thread_safe = True

    def __init__(self, path: Path, device_ids: list[int], interface: Any, options: AscendOptions) -> None:
        super().__init__(path, ",".join(f"npu:{i}" for i in device_ids))
        self.device_ids = device_ids
        self.options = options
        self._workers: list[DeviceWorker] = []
        self._devices: list[_AisDevice] = []
        try:
            for i in device_ids:
                w = DeviceWorker(f"unideploy-ascend-{i}")
                self._workers.append(w)
                self._devices.append(w.call(_AisDevice, interface, i, path, options))
            ins, outs = self._workers[0].call(self._devices[0].describe)
        except BaseException:
            self._release()
            raise
        self.inputs = [TensorInfo(d.name, _dims(d.shape), _dtype(d.datatype)) for d in ins]
        info = om_info(path)
        self.om = info
        self.mode = str(options.mode or info.get("mode") or _infer_mode(self.inputs))
        if self.mode not in MODES:
            self._release()
            raise InputError(f"ascend mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        self.batch_gears = sorted(int(b) for b in options.dynamic_batch or info.get("dynamic_batch") or [])
        self.hw_gears = [tuple(int(v) for v in hw) for hw in options.dynamic_hw or info.get("dynamic_hw") or []]
        dyn_batch = self.mode in ("dymbatch", "dymshape", "dymdims") and any(i.shape and i.shape[0] is None for i in self.inputs)
        self.outputs = []
        for d in outs:
            dims = list(_dims(d.shape))
            if dyn_batch and dims:
                dims[0] = None
            if self.mode in ("dymhw", "dymshape"):
                dims = [dims[0]] + [None if j > 1 else v for j, v in enumerate(dims[1:], 1)] if dims else dims
            self.outputs.append(TensorInfo(d.name, tuple(dims), _dtype(d.datatype)))
        self.custom_sizes = options.custom_sizes or info.get("custom_sizes") or [
            (int(getattr(d, "size", 0)) or DEFAULT_CUSTOM_SIZE) for d in outs]
        self._pool = DevicePool(len(self._devices))

    # -- run ---------------------------------------------------------------------------------------
    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays = [np.ascontiguousarray(feeds[i.name]) for i in self.inputs]
        n = arrays[0].shape[0] if arrays[0].ndim else 1
        if self.mode == "dymhw" and self.hw_gears:
            hw = tuple(arrays[0].shape[2:4])
            if hw not in self.hw_gears:
                raise InputError(f"input '{self.inputs[0].name}' is {hw[0]}x{hw[1]}; this OM model was built for the "
                                 f"image sizes {', '.join(f'{h}x{w}' for h, w in self.hw_gears)} (--dynamic_image_size)")
        if self.mode == "dymbatch" and self.batch_gears and n > max(self.batch_gears) or (
                self.mode == "dymbatch" and len(self._devices) > 1 and n > 1):
            return self._run_split(arrays, n)
        return self._run_one(arrays, n)

    def _pad_to_gear(self, arrays: list[np.ndarray], n: int) -> tuple[list[np.ndarray], int]:
        if self.mode != "dymbatch" or not self.batch_gears:
            return arrays, n
        gear = next_gear(n, self.batch_gears)
        if gear is None:
            raise InputError(f"batch {n} is above the largest batch gear {max(self.batch_gears)} of this OM model")
        if gear == n:
            return arrays, n
        padded = [np.concatenate([a, np.zeros((gear - n, *a.shape[1:]), a.dtype)]) if a.ndim and a.shape[0] == n else a
                  for a in arrays]
        return padded, gear

    def _run_one(self, arrays: list[np.ndarray], n: int) -> list[np.ndarray]:
        arrays, gear = self._pad_to_gear(arrays, n)
        slot = self._pool.acquire()
        try:
            outs, times = self._workers[slot].call(self._devices[slot].infer, arrays, self.mode, self.custom_sizes)
        finally:
            self._pool.release(slot)
        self._set_timings(times)
        if gear != n:
            outs = [o[:n] if o.ndim and o.shape[0] == gear else o for o in outs]
        return outs

    def _run_split(self, arrays: list[np.ndarray], n: int) -> list[np.ndarray]:
        """Split a batch into per-device chunks (at most the largest gear each) and run them concurrently."""
        from concurrent.futures import ThreadPoolExecutor

        chunk = -(-n // len(self._devices))
        if self.batch_gears:
            chunk = min(chunk, max(self.batch_gears))
        starts = list(range(0, n, chunk))
        t0 = time.perf_counter()

        def job(s: int) -> tuple[list[np.ndarray], dict[str, float | None]]:
            part = [a[s : s + chunk] if a.ndim and a.shape[0] == n else a for a in arrays]
            m = part[0].shape[0]
            part, gear = self._pad_to_gear(part, m)
            slot = self._pool.acquire()
            try:
                outs, times = self._workers[slot].call(self._devices[slot].infer, part, self.mode, self.custom_sizes)
            finally:
                self._pool.release(slot)
            return [o[:m] if o.ndim and o.shape[0] == gear else o for o in outs], times

        with ThreadPoolExecutor(max_workers=min(len(starts), len(self._devices)), thread_name_prefix="unideploy-ascend-split") as ex:
            done = list(ex.map(job, starts))  # re-raises the first failure
        timings = [t for _, t in done]
        self._set_timings({"compute": _sum(timings, "compute"), "h2d": _sum(timings, "h2d"), "d2h": _sum(timings, "d2h"),
                           "total": time.perf_counter() - t0})
        self.last_timings.extra["devices_used"] = float(min(len(starts), len(self._devices)))
        return [np.concatenate([r[i] for r, _ in done]) for i in range(len(done[0][0]))]

    def _set_timings(self, times: dict[str, float | None]) -> None:
        t = self.last_timings
        t.compute, t.h2d, t.d2h, t.total = times.get("compute"), times.get("h2d"), times.get("d2h"), times.get("total")

    def fuse_preprocess(self, spec: Any) -> Any:
        """An OM with AIPP takes the letterboxed uint8 BGR image (:func:`aipp_spec`)."""
        return aipp_spec(self.path, spec)

    # -- lifecycle -----------------------------------------------------------------------------------
    def _release(self) -> None:
        errors = []
        for w, d in zip(self._workers, self._devices + [None] * (len(self._workers) - len(self._devices))):
            try:
                w.stop(d.free if d is not None else None)
            except Exception as e:  # keep releasing the other devices
                errors.append(f"npu:{getattr(d, 'device_id', '?')}: {_err(e)}")
        self._workers, self._devices = [], []
        if errors:
            raise BackendError(f"ais_bench free_resource failed: {'; '.join(errors)}")

    def _close(self) -> None:
        self._release()


def _sum(timings: list[dict[str, float | None]], key: str) -> float | None:
    vals = [t.get(key) for t in timings]
    return None if any(v is None for v in vals) or not vals else float(max(vals))  # devices run side by side


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(int(d) if int(d) >= 0 else None for d in shape)


def _dtype(datatype: Any) -> np.dtype:
    name = getattr(datatype, "name", None) or str(datatype)
    name = name.rsplit(".", 1)[-1].lower()
    if name not in AIS_DTYPES:
        raise ModelError(f"unsupported OM tensor data type {name!r}; known: {', '.join(sorted(AIS_DTYPES))}")
    return np.dtype(AIS_DTYPES[name])


def _infer_mode(inputs: list[TensorInfo]) -> str:
    dyn = {j for i in inputs for j, d in enumerate(i.shape) if d is None}
    if not dyn:
        return "static"
    if dyn == {0}:
        return "dymbatch"
    if dyn == {2, 3}:
        return "dymhw"
    return "dymshape"


@dataclass(frozen=True)
class AscendOptions(BackendOptions):
    """Options of :class:`AscendBackend` (see its docstring)."""

    mode: str | None = None
    dynamic_batch: Sequence[int] | None = None
    dynamic_hw: Sequence[Sequence[int]] | None = None
    custom_sizes: int | Sequence[int] | None = None
    acl_json_path: str | None = None
    debug: bool = False


class AscendBackend(Backend):
    """Huawei Ascend NPUs through ais_bench (``pip install`` the ``aclruntime`` and ``ais_bench`` wheels from
    Ascend's ait repository; CANN must be installed and sourced).

    Devices: ``0``, ``npu:0``, several with ``0,1``.

    Options:
        mode: ais_bench infer mode (static, dymbatch, dymhw, dymdims, dymshape); default from the sidecar spec
            or the declared shapes.
        dynamic_batch / dynamic_hw: the model's gears, when no sidecar spec records them (ais_bench cannot
            list them); batches are padded up to the next gear.
        custom_sizes: bytes reserved per output in dymshape mode (int or list).
        acl_json_path: ACL profiling/dump config passed to InferSession.
        debug: ais_bench debug logging.

    Example:
        >>> with AscendBackend.open("yolov8n.om", "0") as s:  # doctest: +SKIP
        ...     outputs = s.run(x)
    """

    name = "ascend"
    runtime_module = "ais_bench"
    extra = "ascend"
    suffixes = (".om",)
    default_device = "0"
    Options = AscendOptions

    @classmethod
    def require(cls) -> Any:
        from unideploy.core.errors import BackendUnavailableError

        if not cls.available():
            raise BackendUnavailableError(
                "backend 'ascend' needs ais_bench (with aclruntime), which is not installed; install the aclruntime and "
                "ais_bench wheels for your CANN version (see docs/accelerators.md), or use --backend acl with pyACL"
            )
        try:
            from ais_bench.infer import interface
        except ImportError as e:
            raise BackendUnavailableError(f"backend 'ascend': importing ais_bench.infer.interface failed: {e}") from None
        return interface

    @classmethod
    def devices(cls) -> list[str]:
        cls.require()
        try:
            import acl

            count, ret = acl.rt.get_device_count()
            if ret == 0:
                return [f"npu:{i}" for i in range(int(count))]
        except Exception:
            pass
        return ["npu:0"]

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, **options: Any) -> AscendSession:
        interface = cls.require()
        opts: AscendOptions = cls.parse_options(options)
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        if path.suffix.lower() != ".om":
            raise ModelError(f"{path}: the ascend backend runs offline models (.om); convert with: unideploy export {path.name} --to om")
        return AscendSession(path, parse_npu_devices(device), interface, opts)
