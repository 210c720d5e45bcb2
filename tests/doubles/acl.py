"""Test double of pyACL (``import acl`` from the CANN toolkit), executing fake OM models with ONNX Runtime.

The calls and their Python signatures are pyACL's (``ret = acl.init()``, ``ctx, ret = acl.rt.create_context(id)``,
``ptr, ret = acl.rt.malloc(size, policy)``, ``ret = acl.rt.memcpy(dst, dst_max, src, count, kind)``,
``model_id, ret = acl.mdl.load_from_file(path)``, ``dims, ret = acl.mdl.get_input_dims(desc, i)`` with
``{"name", "dimCount", "dims"}``, ``_, ret = acl.mdl.add_dataset_buffer(ds, buf)`` ...). Every call returns an
ACL error code instead of raising, as pyACL does, and the double enforces the contracts a real device
enforces:

* call order: nothing before ``acl.init``; ``malloc`` / ``load_from_file`` / ``execute`` need a current
  context (``set_device`` + ``create_context`` in the calling thread); ``get_desc`` needs a loaded model;
* buffer sizes: ``memcpy`` never writes more than ``dst_max`` nor more than the destination allocation,
  ``execute`` needs one data buffer per model input/output, each at least the size the description reports;
* dynamic gears: a dynamic-batch model needs ``set_dynamic_batch_size`` with a gear before ``execute``;
* lifetimes: every handle is valid from its creation to its destruction (use after free / double free is
  ``ACL_ERROR_INVALID_PARAM``); ``acl.finalize`` with anything still alive returns an error and records a
  violation; the last ``reset_device`` of a device (they are reference-counted) with live contexts likewise.

``fail_next(call, code)`` makes the next call of that name return ``code`` (fault injection);
``live()`` lists what is still allocated; ``VIOLATIONS`` and ``CALLS`` record what happened.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from types import SimpleNamespace

import numpy as np

from fake_om import FakeOmError, OmModel

ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_FILE = 100003
ACL_ERROR_INVALID_MODEL_ID = 100008
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID = 145013
ACL_ERROR_RESOURCE_NOT_RELEASED = 500001  # stand-in code for "finalize/reset with live resources"

DEVICE_COUNT = 2
DTYPE = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.uint8): 4}
MBATCH = "ascend_mbatch_shape_data"

_ids = itertools.count(0x7F00_0000_1000)
_lock = threading.RLock()
_tls = threading.local()
VIOLATIONS: list[str] = []
CALLS: list[str] = []
S = SimpleNamespace(inited=False, devices={}, contexts={}, mem={}, buffers={}, datasets={}, models={}, descs={},
                    faults={}, ever_inited=False)


def reset() -> None:
    """Forget everything (between tests)."""
    with _lock:
        S.inited = False
        S.ever_inited = False
        for k in ("devices", "contexts", "mem", "buffers", "datasets", "models", "descs", "faults"):
            getattr(S, k).clear()
        VIOLATIONS.clear()
        CALLS.clear()


def live() -> dict[str, int]:
    """How many of each resource are still alive."""
    with _lock:
        return {k: len(getattr(S, k)) for k in ("devices", "contexts", "mem", "buffers", "datasets", "models", "descs")
                if getattr(S, k)}


def fail_next(call: str, code: int = ACL_ERROR_INVALID_PARAM) -> None:
    """Make the next call named ``call`` (e.g. "acl.rt.malloc") return ``code``."""
    S.faults[call] = code


def _enter(call: str, *, need_init: bool = True, need_ctx: bool = False) -> int:
    CALLS.append(call)
    code = S.faults.pop(call, None)
    if code is not None:
        return code
    if need_init and not S.inited:
        return ACL_ERROR_UNINITIALIZE
    if need_ctx and getattr(_tls, "ctx", None) not in S.contexts:
        return ACL_ERROR_RT_CONTEXT_NULL
    return ACL_SUCCESS


def _new() -> int:
    return next(_ids)


def init(config_path: str | None = None) -> int:
    with _lock:
        ret = _enter("acl.init", need_init=False)
        if ret:
            return ret
        if S.inited:
            return ACL_ERROR_REPEAT_INITIALIZE
        S.inited = S.ever_inited = True
        return ACL_SUCCESS


def finalize() -> int:
    with _lock:
        ret = _enter("acl.finalize", need_init=False)
        if ret:
            return ret
        if not S.inited:
            return ACL_ERROR_REPEAT_FINALIZE
        alive = live()
        if alive:
            VIOLATIONS.append(f"acl.finalize with live resources {alive}")
            return ACL_ERROR_RESOURCE_NOT_RELEASED
        S.inited = False
        return ACL_SUCCESS


def create_data_buffer(ptr: int, size: int) -> int:
    with _lock:
        if _enter("acl.create_data_buffer"):
            return 0
        if ptr not in S.mem or size > len(S.mem[ptr]):
            VIOLATIONS.append(f"create_data_buffer on unknown/too small memory {ptr:#x} size {size}")
            return 0
        h = _new()
        S.buffers[h] = (ptr, int(size))
        return h


def destroy_data_buffer(buf: int) -> int:
    with _lock:
        ret = _enter("acl.destroy_data_buffer")
        if ret:
            return ret
        if buf not in S.buffers:
            VIOLATIONS.append(f"destroy_data_buffer on unknown buffer {buf:#x}")
            return ACL_ERROR_INVALID_PARAM
        del S.buffers[buf]
        return ACL_SUCCESS


def get_data_buffer_addr(buf: int) -> int:
    return S.buffers.get(buf, (0, 0))[0]


def get_data_buffer_size_v2(buf: int) -> int:
    return S.buffers.get(buf, (0, 0))[1]


class rt:  # noqa: N801 - pyACL's submodule
    @staticmethod
    def get_device_count():
        return DEVICE_COUNT, _enter("acl.rt.get_device_count")

    @staticmethod
    def set_device(device_id: int) -> int:
        with _lock:
            ret = _enter("acl.rt.set_device")
            if ret:
                return ret
            if not isinstance(device_id, int) or not 0 <= device_id < DEVICE_COUNT:
                return ACL_ERROR_RT_INVALID_DEVICEID
            S.devices[device_id] = S.devices.get(device_id, 0) + 1
            return ACL_SUCCESS

    @staticmethod
    def reset_device(device_id: int) -> int:
        with _lock:
            ret = _enter("acl.rt.reset_device")
            if ret:
                return ret
            if device_id not in S.devices:
                return ACL_ERROR_RT_INVALID_DEVICEID
            # set_device/reset_device are reference-counted per process: only the last reset releases the
            # device, and it must not leave explicitly created contexts behind
            if S.devices[device_id] == 1 and any(d == device_id for d in S.contexts.values()):
                VIOLATIONS.append(f"reset_device({device_id}) releases the device with live contexts on it")
                return ACL_ERROR_RESOURCE_NOT_RELEASED
            S.devices[device_id] -= 1
            if not S.devices[device_id]:
                del S.devices[device_id]
            return ACL_SUCCESS

    @staticmethod
    def create_context(device_id: int):
        with _lock:
            ret = _enter("acl.rt.create_context")
            if ret:
                return 0, ret
            if device_id not in S.devices:
                return 0, ACL_ERROR_RT_INVALID_DEVICEID
            ctx = _new()
            S.contexts[ctx] = device_id
            _tls.ctx = ctx  # aclrtCreateContext makes the new context current for the thread
            return ctx, ACL_SUCCESS

    @staticmethod
    def set_context(ctx: int) -> int:
        ret = _enter("acl.rt.set_context")
        if ret:
            return ret
        if ctx not in S.contexts:
            return ACL_ERROR_INVALID_PARAM
        _tls.ctx = ctx
        return ACL_SUCCESS

    @staticmethod
    def destroy_context(ctx: int) -> int:
        with _lock:
            ret = _enter("acl.rt.destroy_context")
            if ret:
                return ret
            if ctx not in S.contexts:
                VIOLATIONS.append("destroy_context on unknown context")
                return ACL_ERROR_INVALID_PARAM
            leaked = [m for m in S.models.values() if m["ctx"] == ctx]
            if leaked:
                VIOLATIONS.append(f"destroy_context with {len(leaked)} model(s) still loaded")
            del S.contexts[ctx]
            if getattr(_tls, "ctx", None) == ctx:
                _tls.ctx = None
            return ACL_SUCCESS

    @staticmethod
    def get_run_mode():
        return 1, _enter("acl.rt.get_run_mode")  # ACL_HOST

    @staticmethod
    def malloc(size: int, policy: int):
        with _lock:
            ret = _enter("acl.rt.malloc", need_ctx=True)
            if ret:
                return 0, ret
            if size <= 0 or policy not in (0, 1, 2):
                return 0, ACL_ERROR_INVALID_PARAM
            ptr = _new()
            S.mem[ptr] = bytearray(int(size))
            return ptr, ACL_SUCCESS

    @staticmethod
    def free(ptr: int) -> int:
        with _lock:
            ret = _enter("acl.rt.free", need_ctx=True)
            if ret:
                return ret
            if ptr not in S.mem:
                VIOLATIONS.append(f"free of unknown device memory {ptr:#x}")
                return ACL_ERROR_INVALID_PARAM
            if any(p == ptr for p, _ in S.buffers.values()):
                pass  # pyACL allows it; the data buffer then dangles (destroy it first, as the samples do)
            del S.mem[ptr]
            return ACL_SUCCESS

    @staticmethod
    def memcpy(dst: int, dst_max: int, src: int, count: int, kind: int) -> int:
        with _lock:
            ret = _enter("acl.rt.memcpy", need_ctx=True)
            if ret:
                return ret
            if count > dst_max:
                VIOLATIONS.append(f"memcpy of {count} bytes into dst_max {dst_max}")
                return ACL_ERROR_INVALID_PARAM
            if kind == 1:  # host to device
                if dst not in S.mem or count > len(S.mem[dst]) or dst_max > len(S.mem[dst]):
                    VIOLATIONS.append("memcpy H2D: destination is not device memory of that size")
                    return ACL_ERROR_INVALID_PARAM
                S.mem[dst][:count] = ctypes.string_at(src, count)
                return ACL_SUCCESS
            if kind == 2:  # device to host
                if src not in S.mem or count > len(S.mem[src]):
                    VIOLATIONS.append("memcpy D2H: source is not device memory of that size")
                    return ACL_ERROR_INVALID_PARAM
                ctypes.memmove(dst, bytes(S.mem[src][:count]), count)
                return ACL_SUCCESS
            return ACL_ERROR_INVALID_PARAM  # the double runs in ACL_HOST mode only


class mdl:  # noqa: N801
    @staticmethod
    def load_from_file(path: str):
        with _lock:
            ret = _enter("acl.mdl.load_from_file", need_ctx=True)
            if ret:
                return 0, ret
            try:
                om = OmModel(path)
            except FakeOmError:
                return 0, ACL_ERROR_INVALID_FILE
            mid = _new() & 0xFFFF
            S.models[mid] = {"om": om, "device": S.contexts[_tls.ctx], "ctx": _tls.ctx, "batch": None, "hw": None, "cur": None}
            return mid, ACL_SUCCESS

    @staticmethod
    def unload(model_id: int) -> int:
        with _lock:
            ret = _enter("acl.mdl.unload", need_ctx=True)
            if ret:
                return ret
            if model_id not in S.models:
                return ACL_ERROR_INVALID_MODEL_ID
            if any(d == model_id for d in S.descs.values()):
                pass  # a description outlives its model legally; it just describes a gone model
            del S.models[model_id]
            return ACL_SUCCESS

    @staticmethod
    def create_desc() -> int:
        with _lock:
            if _enter("acl.mdl.create_desc"):
                return 0
            h = _new()
            S.descs[h] = None
            return h

    @staticmethod
    def get_desc(desc: int, model_id: int) -> int:
        with _lock:
            ret = _enter("acl.mdl.get_desc")
            if ret:
                return ret
            if desc not in S.descs or model_id not in S.models:
                return ACL_ERROR_INVALID_PARAM
            S.descs[desc] = model_id
            return ACL_SUCCESS

    @staticmethod
    def destroy_desc(desc: int) -> int:
        with _lock:
            ret = _enter("acl.mdl.destroy_desc")
            if ret:
                return ret
            if desc not in S.descs:
                VIOLATIONS.append("destroy_desc on unknown description")
                return ACL_ERROR_INVALID_PARAM
            del S.descs[desc]
            return ACL_SUCCESS

    # -- descriptions -----------------------------------------------------------------------------
    @staticmethod
    def _om(desc: int) -> OmModel:
        mid = S.descs.get(desc)
        if mid is None or mid not in S.models:
            raise KeyError(desc)
        return S.models[mid]["om"]

    @staticmethod
    def _inputs(om: OmModel) -> list[tuple[str, list[int], int, int]]:
        """(name, dims with -1, dtype code, size for the largest gear) per input, ATC's extra input last."""
        ins = [(om.input_name, om.input_shape, DTYPE[om.input_dtype], int(np.prod(om.max_input)) * om.input_dtype.itemsize)]
        if om.batch_gears:
            ins.append((MBATCH, [1], 9, 8))
        if om.hw_gears:
            ins.append((MBATCH, [2], 9, 16))
        return ins

    @staticmethod
    def _outputs(om: OmModel) -> list[tuple[str, list[int], int, int]]:
        code = DTYPE[om.output_dtype]
        return [(n, s, code, int(np.prod(m)) * om.output_dtype.itemsize)
                for n, s, m in zip(om.output_names, om.output_shapes, om.max_output_shapes)]

    @staticmethod
    def get_num_inputs(desc: int) -> int:
        return len(mdl._inputs(mdl._om(desc)))

    @staticmethod
    def get_num_outputs(desc: int) -> int:
        return len(mdl._outputs(mdl._om(desc)))

    @staticmethod
    def get_input_size_by_index(desc: int, i: int) -> int:
        return mdl._inputs(mdl._om(desc))[i][3]

    @staticmethod
    def get_output_size_by_index(desc: int, i: int) -> int:
        return mdl._outputs(mdl._om(desc))[i][3]

    @staticmethod
    def get_input_dims(desc: int, i: int):
        name, dims, _, _ = mdl._inputs(mdl._om(desc))[i]
        return {"name": name, "dimCount": len(dims), "dims": list(dims)}, _enter("acl.mdl.get_input_dims")

    @staticmethod
    def get_output_dims(desc: int, i: int):
        name, dims, _, _ = mdl._outputs(mdl._om(desc))[i]
        return {"name": f"Node:0:{name}", "dimCount": len(dims), "dims": list(dims)}, _enter("acl.mdl.get_output_dims")

    @staticmethod
    def get_input_data_type(desc: int, i: int) -> int:
        return mdl._inputs(mdl._om(desc))[i][2]

    @staticmethod
    def get_output_data_type(desc: int, i: int) -> int:
        return mdl._outputs(mdl._om(desc))[i][2]

    @staticmethod
    def get_input_index_by_name(desc: int, name: str):
        names = [n for n, *_ in mdl._inputs(mdl._om(desc))]
        return (names.index(name), ACL_SUCCESS) if name in names else (-1, ACL_ERROR_INVALID_PARAM)

    @staticmethod
    def get_dynamic_batch(desc: int):
        om = mdl._om(desc)
        return {"batchCount": len(om.batch_gears), "batch": list(om.batch_gears)}, _enter("acl.mdl.get_dynamic_batch")

    @staticmethod
    def get_dynamic_hw(desc: int, index: int):
        om = mdl._om(desc)
        return {"hwCount": len(om.hw_gears), "hw": [list(hw) for hw in om.hw_gears]}, _enter("acl.mdl.get_dynamic_hw")

    @staticmethod
    def get_cur_output_dims(desc: int, i: int):
        ret = _enter("acl.mdl.get_cur_output_dims")
        mid = S.descs.get(desc)
        cur = S.models.get(mid, {}).get("cur")
        if ret or cur is None:
            return {"name": "", "dimCount": 0, "dims": []}, ret or ACL_ERROR_INVALID_PARAM
        return {"name": mdl._outputs(mdl._om(desc))[i][0], "dimCount": len(cur[i]), "dims": list(cur[i])}, ACL_SUCCESS

    # -- datasets ------------------------------------------------------------------------------------
    @staticmethod
    def create_dataset() -> int:
        with _lock:
            if _enter("acl.mdl.create_dataset"):
                return 0
            h = _new()
            S.datasets[h] = []
            return h

    @staticmethod
    def add_dataset_buffer(ds: int, buf: int):
        with _lock:
            ret = _enter("acl.mdl.add_dataset_buffer")
            if ret:
                return ds, ret
            if ds not in S.datasets or buf not in S.buffers:
                return ds, ACL_ERROR_INVALID_PARAM
            S.datasets[ds].append(buf)
            return ds, ACL_SUCCESS

    @staticmethod
    def get_dataset_num_buffers(ds: int) -> int:
        return len(S.datasets.get(ds, []))

    @staticmethod
    def get_dataset_buffer(ds: int, i: int) -> int:
        return S.datasets[ds][i]

    @staticmethod
    def destroy_dataset(ds: int) -> int:
        with _lock:
            ret = _enter("acl.mdl.destroy_dataset")
            if ret:
                return ret
            if ds not in S.datasets:
                VIOLATIONS.append("destroy_dataset on unknown dataset")
                return ACL_ERROR_INVALID_PARAM
            del S.datasets[ds]
            return ACL_SUCCESS

    # -- execution -----------------------------------------------------------------------------------
    @staticmethod
    def set_dynamic_batch_size(model_id: int, ds: int, index: int, batch: int) -> int:
        with _lock:
            ret = _enter("acl.mdl.set_dynamic_batch_size", need_ctx=True)
            if ret:
                return ret
            m = S.models.get(model_id)
            if m is None or ds not in S.datasets:
                return ACL_ERROR_INVALID_PARAM
            om = m["om"]
            names = [n for n, *_ in mdl._inputs(om)]
            if MBATCH not in names or index != names.index(MBATCH) or batch not in om.batch_gears:
                return ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID
            m["batch"] = batch
            return ACL_SUCCESS

    @staticmethod
    def set_dynamic_hw_size(model_id: int, ds: int, index: int, height: int, width: int) -> int:
        with _lock:
            ret = _enter("acl.mdl.set_dynamic_hw_size", need_ctx=True)
            if ret:
                return ret
            m = S.models.get(model_id)
            if m is None or (height, width) not in m["om"].hw_gears:
                return ACL_ERROR_INVALID_PARAM
            m["hw"] = (height, width)
            return ACL_SUCCESS

    @staticmethod
    def execute(model_id: int, in_ds: int, out_ds: int) -> int:
        with _lock:
            ret = _enter("acl.mdl.execute", need_ctx=True)
            if ret:
                return ret
            m = S.models.get(model_id)
            if m is None:
                return ACL_ERROR_INVALID_MODEL_ID
            if S.contexts[_tls.ctx] != m["device"]:
                VIOLATIONS.append("execute with a context of another device")
                return ACL_ERROR_INVALID_PARAM
            om = m["om"]
            ins, outs = mdl._inputs(om), mdl._outputs(om)
            if in_ds not in S.datasets or out_ds not in S.datasets:
                return ACL_ERROR_INVALID_PARAM
            if len(S.datasets[in_ds]) != len(ins) or len(S.datasets[out_ds]) != len(outs):
                VIOLATIONS.append(f"execute with {len(S.datasets[in_ds])} input / {len(S.datasets[out_ds])} output "
                                  f"buffers for a model with {len(ins)} / {len(outs)}")
                return ACL_ERROR_INVALID_PARAM
            for buf, (name, _, _, size) in zip(S.datasets[in_ds] + S.datasets[out_ds], ins + outs):
                if buf not in S.buffers or S.buffers[buf][1] < size or S.buffers[buf][0] not in S.mem:
                    VIOLATIONS.append(f"execute: buffer for {name} is missing, freed or smaller than {size} bytes")
                    return ACL_ERROR_INVALID_PARAM
            shape = list(om.max_input)
            if om.batch_gears:
                if m["batch"] is None:
                    return ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID
                shape[0] = m["batch"]
            if om.hw_gears:
                if m["hw"] is None:
                    return ACL_ERROR_INVALID_PARAM
                shape[2], shape[3] = m["hw"]
            ptr = S.buffers[S.datasets[in_ds][0]][0]
            n = int(np.prod(shape)) * om.input_dtype.itemsize
            x = np.frombuffer(bytes(S.mem[ptr][:n]), om.input_dtype).reshape(shape)
            results = om.execute([x])
            cur = []
            for buf, r in zip(S.datasets[out_ds], results):
                optr, osize = S.buffers[buf]
                if r.nbytes > osize:
                    return ACL_ERROR_INVALID_PARAM
                S.mem[optr][: r.nbytes] = r.tobytes()
                cur.append(list(r.shape))
            m["cur"] = cur
            return ACL_SUCCESS


class util:  # noqa: N801
    @staticmethod
    def numpy_to_ptr(arr: np.ndarray) -> int:
        return arr.ctypes.data

    @staticmethod
    def bytes_to_ptr(data: bytes) -> int:
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
