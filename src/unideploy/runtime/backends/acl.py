"""Huawei Ascend backend on raw pyACL (the ``acl`` module of CANN), for machines without ais_bench.

The whole AscendCL lifecycle, each call's return code checked and turned into a :class:`BackendError`
naming the call and the code::

    acl.init ─► rt.set_device ─► rt.create_context ─► mdl.load_from_file ─► mdl.create_desc/get_desc
      ─► per input and output: rt.malloc ─► create_data_buffer ─► mdl.add_dataset_buffer   (sizes from the desc)
    run:   rt.memcpy H2D ─► [mdl.set_dynamic_batch_size / set_dynamic_hw_size] ─► mdl.execute ─► rt.memcpy D2H
    close: destroy_data_buffer + rt.free ─► mdl.destroy_dataset ─► mdl.destroy_desc ─► mdl.unload
           ─► rt.destroy_context ─► rt.reset_device ─► acl.finalize (when the last session closes)

Every resource is pushed on a release stack the moment it exists, so a failure at any step releases what
was already made (in reverse order) before the error propagates; sessions still open at interpreter exit
are closed by an ``atexit`` hook, and ``acl.finalize`` runs only after every resource is released and only
if this module called ``acl.init`` (a host program that initialised ACL itself keeps it).

Each device's objects live in one worker thread (an ACL context belongs to the thread that set it).

Example:
    >>> import unideploy
    >>> with unideploy.load("yolov8n.om", backend="acl", device="0") as predictor:  # doctest: +SKIP
    ...     dets = predictor("bus.jpg")
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np

from unideploy.core.errors import BackendError, BackendUnavailableError, DeviceError, InputError, ModelError
from unideploy.runtime.backends.ascend import DevicePool, DeviceWorker, aipp_spec, next_gear, om_info, parse_npu_devices
from unideploy.runtime.backends.base import Backend, Session, TensorInfo

ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
ACL_DEVICE, ACL_HOST = 0, 1
#: the extra input ATC adds to dynamic batch / image size models
DYNAMIC_INPUT = "ascend_mbatch_shape_data"

#: aclDataType -> numpy dtype
ACL_DTYPES = {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32, 4: np.uint8, 6: np.int16, 7: np.uint16,
              8: np.uint32, 9: np.int64, 10: np.uint64, 11: np.float64, 12: np.bool_}


def check(ret: Any, call: str, detail: str = "") -> None:
    """Raise BackendError naming ``call`` when an ACL return code is not ACL_SUCCESS."""
    if ret != ACL_SUCCESS:
        raise BackendError(f"{call} failed with ACL error {ret}{': ' + detail if detail else ''}")


class _Runtime:
    """Process-wide ``acl.init`` / ``acl.finalize``, reference-counted over open devices."""

    lock = threading.Lock()
    refs = 0
    owned = False  # True when this module's acl.init succeeded (so finalize is ours to call)

    @classmethod
    def acquire(cls, acl: Any) -> None:
        with cls.lock:
            if cls.refs == 0 and not cls.owned:
                ret = acl.init()
                if ret == ACL_SUCCESS:
                    cls.owned = True
                elif ret != ACL_ERROR_REPEAT_INITIALIZE:  # initialised by the host program: not ours to finalize
                    check(ret, "acl.init")
            cls.refs += 1

    @classmethod
    def release(cls, acl: Any) -> None:
        with cls.lock:
            cls.refs -= 1
            if cls.refs == 0 and cls.owned:
                cls.owned = False
                ret = acl.finalize()
                if ret not in (ACL_SUCCESS, ACL_ERROR_REPEAT_FINALIZE):
                    check(ret, "acl.finalize")


class _ReleaseStack:
    """Release callbacks run in reverse order; every one runs even if some fail; the failures are reported."""

    def __init__(self) -> None:
        self._items: list[tuple[str, Callable[[], Any]]] = []

    def push(self, call: str, fn: Callable[[], Any]) -> None:
        self._items.append((call, fn))

    def unwind(self) -> list[str]:
        errors = []
        while self._items:
            call, fn = self._items.pop()
            try:
                ret = fn()
                if isinstance(ret, int) and ret != ACL_SUCCESS:
                    errors.append(f"{call} returned ACL error {ret}")
            except Exception as e:
                errors.append(f"{call} raised {type(e).__name__}: {e}")
        return errors


class _Binding:
    def __init__(self, index: int, name: str, dims: list[int], dtype: np.dtype, size: int, ptr: int) -> None:
        self.index, self.name, self.dims, self.dtype, self.size, self.ptr = index, name, dims, dtype, size, ptr


class AclModel:
    """An OM model loaded on one device with pyACL. Create, run and close it in one thread."""

    def __init__(self, acl: Any, device_id: int, path: Path) -> None:
        self.acl = acl
        self.device_id = device_id
        self.path = path
        self._stack = _ReleaseStack()
        self.closed = False
        _Runtime.acquire(acl)
        self._stack.push("acl.finalize", lambda: _Runtime.release(acl))
        try:
            self._open()
        except BaseException:
            errors = self._stack.unwind()
            self.closed = True
            if errors:  # the original error matters most; the cleanup failures are appended
                import sys

                e = sys.exc_info()[1]
                if isinstance(e, BackendError):
                    raise BackendError(f"{e}; while releasing: {'; '.join(errors)}") from None
            raise

    def _open(self) -> None:
        acl, dev = self.acl, self.device_id
        ret = acl.rt.set_device(dev)
        if ret != ACL_SUCCESS:
            count, ret2 = acl.rt.get_device_count() if hasattr(acl.rt, "get_device_count") else (None, 1)
            have = f"; this machine has {count} device(s): {', '.join(str(i) for i in range(count))}" if ret2 == ACL_SUCCESS else ""
            raise DeviceError(f"acl.rt.set_device({dev}) failed with ACL error {ret}{have}")
        self._stack.push("acl.rt.reset_device", lambda: acl.rt.reset_device(dev))
        self.context, ret = acl.rt.create_context(dev)
        check(ret, "acl.rt.create_context")
        ctx = self.context
        self._stack.push("acl.rt.destroy_context", lambda: acl.rt.destroy_context(ctx))
        run_mode, ret = acl.rt.get_run_mode()
        check(ret, "acl.rt.get_run_mode")
        # on the device itself (Atlas 200 DK run mode) host memory is device memory
        self.h2d = ACL_MEMCPY_DEVICE_TO_DEVICE if run_mode == ACL_DEVICE else ACL_MEMCPY_HOST_TO_DEVICE
        self.d2h = ACL_MEMCPY_DEVICE_TO_DEVICE if run_mode == ACL_DEVICE else ACL_MEMCPY_DEVICE_TO_HOST
        self.model_id, ret = acl.mdl.load_from_file(str(self.path))
        if ret != ACL_SUCCESS:
            raise ModelError(f"{self.path}: acl.mdl.load_from_file failed with ACL error {ret} (not an OM model for this SoC?)")
        mid = self.model_id
        self._stack.push("acl.mdl.unload", lambda: acl.mdl.unload(mid))
        self.desc = acl.mdl.create_desc()
        if not self.desc:
            raise BackendError("acl.mdl.create_desc returned no description")
        desc = self.desc
        self._stack.push("acl.mdl.destroy_desc", lambda: acl.mdl.destroy_desc(desc))
        check(acl.mdl.get_desc(desc, mid), "acl.mdl.get_desc")
        self.in_ds, self.inputs = self._dataset("input")
        self.out_ds, self.outputs = self._dataset("output")
        self.dynamic_index = next((b.index for b in self.inputs if b.name == DYNAMIC_INPUT), None)
        self.user_inputs = [b for b in self.inputs if b.name != DYNAMIC_INPUT]
        self.batch_gears: list[int] = []
        self.hw_gears: list[tuple[int, int]] = []
        if self.dynamic_index is not None:
            info, ret = acl.mdl.get_dynamic_batch(desc)
            if ret == ACL_SUCCESS and info and info.get("batchCount"):
                self.batch_gears = sorted(int(b) for b in info["batch"])
            info, ret = acl.mdl.get_dynamic_hw(desc, -1)
            if ret == ACL_SUCCESS and info and info.get("hwCount"):
                self.hw_gears = [(int(h), int(w)) for h, w in info["hw"]]

    def _dataset(self, kind: str) -> tuple[Any, list[_Binding]]:
        """One device buffer + data buffer per tensor, all in a new dataset; sizes from the description."""
        acl, desc = self.acl, self.desc
        ds = acl.mdl.create_dataset()
        if not ds:
            raise BackendError(f"acl.mdl.create_dataset ({kind}s) returned no dataset")
        self._stack.push("acl.mdl.destroy_dataset", lambda: acl.mdl.destroy_dataset(ds))
        count = acl.mdl.get_num_inputs(desc) if kind == "input" else acl.mdl.get_num_outputs(desc)
        bindings = []
        for i in range(count):
            size = acl.mdl.get_input_size_by_index(desc, i) if kind == "input" else acl.mdl.get_output_size_by_index(desc, i)
            dims, ret = acl.mdl.get_input_dims(desc, i) if kind == "input" else acl.mdl.get_output_dims(desc, i)
            check(ret, f"acl.mdl.get_{kind}_dims({i})")
            dt = acl.mdl.get_input_data_type(desc, i) if kind == "input" else acl.mdl.get_output_data_type(desc, i)
            if dt not in ACL_DTYPES:
                raise ModelError(f"{self.path}: {kind} {i} has ACL data type {dt}, which unideploy does not map to numpy")
            if size <= 0:
                raise ModelError(f"{self.path}: {kind} {i} reports a buffer size of {size} bytes (dynamic shape models need the ascend backend's dymshape mode)")
            ptr, ret = acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
            check(ret, f"acl.rt.malloc({size})", f"{kind} {i}")
            self._stack.push("acl.rt.free", lambda p=ptr: acl.rt.free(p))
            buf = acl.create_data_buffer(ptr, size)
            if not buf:
                raise BackendError(f"acl.create_data_buffer returned no buffer for {kind} {i}")
            self._stack.push("acl.destroy_data_buffer", lambda b=buf: acl.destroy_data_buffer(b))
            _, ret = acl.mdl.add_dataset_buffer(ds, buf)
            check(ret, "acl.mdl.add_dataset_buffer", f"{kind} {i}")
            name = str(dims.get("name") or "").split(":")[-1] or f"{kind}{i}"
            bindings.append(_Binding(i, name, [int(d) for d in dims["dims"]], np.dtype(ACL_DTYPES[dt]), int(size), ptr))
        return ds, bindings

    # -- run ----------------------------------------------------------------------------------------
    def run(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, float]]:
        acl = self.acl
        if self.closed:
            raise BackendError("acl model is closed")
        t0 = time.perf_counter()
        for b, a in zip(self.user_inputs, arrays):
            a = np.ascontiguousarray(a)
            if a.nbytes > b.size:
                raise InputError(f"input '{b.name}' holds {a.nbytes} bytes, above its device buffer of {b.size} bytes")
            check(acl.rt.memcpy(b.ptr, b.size, a.ctypes.data, a.nbytes, self.h2d), "acl.rt.memcpy (host to device)", b.name)
        if self.dynamic_index is not None:
            shape = arrays[0].shape
            if self.batch_gears:
                check(acl.mdl.set_dynamic_batch_size(self.model_id, self.in_ds, self.dynamic_index, int(shape[0])),
                      "acl.mdl.set_dynamic_batch_size", f"batch {shape[0]}")
            elif self.hw_gears:
                check(acl.mdl.set_dynamic_hw_size(self.model_id, self.in_ds, self.dynamic_index, int(shape[2]), int(shape[3])),
                      "acl.mdl.set_dynamic_hw_size", f"{shape[2]}x{shape[3]}")
        t1 = time.perf_counter()
        check(acl.mdl.execute(self.model_id, self.in_ds, self.out_ds), "acl.mdl.execute")
        t2 = time.perf_counter()
        outs = []
        for b in self.outputs:
            dims = b.dims
            if self.dynamic_index is not None or any(d < 0 for d in dims):
                cur, ret = acl.mdl.get_cur_output_dims(self.desc, b.index)
                check(ret, "acl.mdl.get_cur_output_dims", b.name)
                dims = [int(d) for d in cur["dims"]]
            out = np.empty(dims, b.dtype)
            if out.nbytes > b.size:
                raise BackendError(f"output '{b.name}' of shape {tuple(dims)} needs {out.nbytes} bytes, above its buffer of {b.size}")
            check(acl.rt.memcpy(out.ctypes.data, out.nbytes, b.ptr, out.nbytes, self.d2h), "acl.rt.memcpy (device to host)", b.name)
            outs.append(out)
        t3 = time.perf_counter()
        return outs, {"h2d": t1 - t0, "compute": t2 - t1, "d2h": t3 - t2, "total": t3 - t0}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        errors = self._stack.unwind()
        if errors:
            raise BackendError(f"releasing ACL resources of {self.path.name} on device {self.device_id}: {'; '.join(errors)}")


_LIVE: "weakref.WeakSet[AclSession]" = weakref.WeakSet()
_ATEXIT = [False]


def _close_all() -> None:
    """atexit: close sessions still open so every device resource is released before acl.finalize."""
    for s in list(_LIVE):
        try:
            s.close()
        except Exception:
            pass


class AclSession(Session):
    """An OM model on one or more devices through raw pyACL; see :class:`AclBackend`."""

    backend = "acl"
    thread_safe = True

    def __init__(self, path: Path, device_ids: list[int], acl: Any, options: Any = None) -> None:
        super().__init__(path, ",".join(f"npu:{i}" for i in device_ids))
        self._workers: list[DeviceWorker] = []
        self._models: list[AclModel] = []
        try:
            for i in device_ids:
                w = DeviceWorker(f"unideploy-acl-{i}")
                self._workers.append(w)
                self._models.append(w.call(AclModel, acl, i, path))
        except BaseException:
            self._release()
            raise
        m = self._models[0]
        self.batch_gears = m.batch_gears or sorted(int(b) for b in om_info(path).get("dynamic_batch", []) or [])
        self.hw_gears = m.hw_gears
        self.inputs = []
        for b in m.user_inputs:
            dims: list[int | None] = [d if d >= 0 else None for d in b.dims]
            if m.batch_gears and dims:
                dims[0] = None
            if m.hw_gears and len(dims) == 4:
                dims[2] = dims[3] = None
            self.inputs.append(TensorInfo(b.name, tuple(dims), b.dtype))
        self.outputs = []
        for b in m.outputs:
            dims = [d if d >= 0 else None for d in b.dims]
            if m.batch_gears and dims:
                dims[0] = None
            if m.hw_gears:
                dims = [dims[0]] + [dims[1] if len(dims) == 3 else None] + [None] * (len(dims) - 2) if len(dims) >= 2 else dims
            self.outputs.append(TensorInfo(b.name, tuple(dims), b.dtype))
        self._pool = DevicePool(len(self._models))
        _LIVE.add(self)
        if not _ATEXIT[0]:
            _ATEXIT[0] = True
            atexit.register(_close_all)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays = [feeds[i.name] for i in self.inputs]
        n = arrays[0].shape[0]
        gear = n
        if self.batch_gears:
            gear = next_gear(n, self.batch_gears)
            if gear is None:
                raise InputError(f"batch {n} is above the largest batch gear {max(self.batch_gears)} of this OM model")
            if gear != n:
                arrays = [np.concatenate([a, np.zeros((gear - n, *a.shape[1:]), a.dtype)]) for a in arrays]
        if self.hw_gears and tuple(arrays[0].shape[2:4]) not in self.hw_gears:
            raise InputError(f"input '{self.inputs[0].name}' is {arrays[0].shape[2]}x{arrays[0].shape[3]}; this OM model was "
                             f"built for {', '.join(f'{h}x{w}' for h, w in self.hw_gears)} (--dynamic_image_size)")
        slot = self._pool.acquire()
        try:
            outs, times = self._workers[slot].call(self._models[slot].run, arrays)
        finally:
            self._pool.release(slot)
        t = self.last_timings
        t.h2d, t.compute, t.d2h, t.total = times["h2d"], times["compute"], times["d2h"], times["total"]
        return [o[:n] if gear != n and o.ndim and o.shape[0] == gear else o for o in outs]

    def _release(self) -> None:
        errors = []
        for w, m in zip(self._workers, self._models + [None] * (len(self._workers) - len(self._models))):
            try:
                w.stop(m.close if m is not None else None)
            except Exception as e:
                errors.append(str(e))
        self._workers, self._models = [], []
        if errors:
            raise BackendError("; ".join(errors))

    def fuse_preprocess(self, spec: Any) -> Any:
        """An OM with AIPP takes the letterboxed uint8 BGR image (:func:`~unideploy.runtime.backends.ascend.aipp_spec`)."""
        return aipp_spec(self.path, spec)

    def _close(self) -> None:
        _LIVE.discard(self)
        self._release()


class AclBackend(Backend):
    """Huawei Ascend NPUs through raw pyACL (``import acl``, shipped with the CANN toolkit; source its set_env.sh).

    Devices: ``0``, ``npu:0``, several with ``0,1``. Static, dynamic-batch (``--dynamic_batch_size``) and
    dynamic-image-size (``--dynamic_image_size``) OM models; a batch that is not a gear is padded to the next one.

    Example:
        >>> with AclBackend.open("yolov8n.om", "0") as s:  # doctest: +SKIP
        ...     outputs = s.run(x)
    """

    name = "acl"
    runtime_module = "acl"
    extra = "ascend"
    suffixes = ()  # .om opens with the ascend (ais_bench) backend by default; pick this one with --backend acl
    default_device = "0"

    @classmethod
    def require(cls) -> Any:
        if not cls.available():
            raise BackendUnavailableError(
                "backend 'acl' needs pyACL (the 'acl' module of the CANN toolkit), which is not importable; install CANN "
                "and run 'source /usr/local/Ascend/ascend-toolkit/set_env.sh' (see docs/accelerators.md)"
            )
        return super().require()

    @classmethod
    def devices(cls) -> list[str]:
        acl = cls.require()
        count, ret = acl.rt.get_device_count()
        check(ret, "acl.rt.get_device_count")
        return [f"npu:{i}" for i in range(int(count))]

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, **options: Any) -> AclSession:
        acl = cls.require()
        opts = cls.parse_options(options)  # declares none: any key but the shared ones is an error
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return AclSession(path, parse_npu_devices(device), acl, opts)
