"""Test double of ``ais_bench.infer.interface`` (Ascend ait benchmark's Python API).

Same names, signatures and behaviour as the real module (``InferSession(device_id, model_path,
acl_json_path=None, debug=False, loop=1)``, ``get_inputs()`` / ``get_outputs()`` returning tensor
descriptions with ``name``, ``datatype`` (an enum), ``format``, ``shape`` (-1 for dynamic dims),
``size``, ``realsize``; ``infer(feeds, mode='static', custom_sizes=100000, out_array=True)``;
``summary()`` with ``exec_time_list`` in milliseconds; ``free_resource()``; static ``finalize()``;
``MemorySummary.get_h2d_time_list()`` / ``get_d2h_time_list()`` / ``reset()``), executing the fake OM
(``fake_om.py``) with ONNX Runtime. Contracts enforced, each a RuntimeError like aclruntime raises:

* device ids must exist (``DEVICE_COUNT``), the model file must be an OM;
* ``mode`` must be one of the five modes and fit the model ('not a dymbatch model!' ...);
* static: each feed's shape and byte size must equal the input's; dymbatch / dymhw: the batch / (h, w)
  must be one of the model's gears; dymshape: ``custom_sizes`` (int or list) must hold every output;
* feeds must be numpy arrays (or numpy scalars) of the input's data type;
* a session is used only from the thread that created it (an ACL context belongs to its thread),
  and not after ``free_resource()``.

``STATE`` records live sessions and calls so tests can assert that every session was freed.
``use_legacy_api(True)`` switches to the older spelling (``sumary()``, ``get_H2D_time_list``).
"""

from __future__ import annotations

import enum
import threading
import time
from types import SimpleNamespace

import numpy as np

from fake_om import FakeOmError, OmModel

DEVICE_COUNT = 2
MODES = ("static", "dymbatch", "dymhw", "dymdims", "dymshape")


class dtype(enum.Enum):  # noqa: N801 - aclruntime.dtype
    uint8 = 0
    int8 = 1
    uint16 = 2
    int16 = 3
    uint32 = 4
    int32 = 5
    uint64 = 6
    int64 = 7
    float16 = 8
    float32 = 9
    double64 = 10
    bool = 11


_NP_TO_DTYPE = {np.dtype(np.float32): dtype.float32, np.dtype(np.float16): dtype.float16, np.dtype(np.uint8): dtype.uint8,
                np.dtype(np.int32): dtype.int32, np.dtype(np.int64): dtype.int64}


class TensorDesc:
    """aclruntime.tensor_desc."""

    def __init__(self, name: str, datatype: dtype, shape: list[int], itemsize: int, real: list[int]):
        self.name, self.datatype, self.format, self.shape = name, datatype, 0, list(shape)
        self.size = int(np.prod(real)) * itemsize
        self.realsize = self.size


STATE = SimpleNamespace(sessions=[], calls=[], legacy=False)
_MEMORY = {"h2d": [], "d2h": []}
_LOCK = threading.Lock()


def reset_state() -> None:
    STATE.sessions.clear()
    STATE.calls.clear()
    MemorySummary.reset()


def use_legacy_api(legacy: bool) -> None:
    """Old ais_bench: ``sumary()`` instead of ``summary()``, ``get_H2D_time_list`` instead of ``get_h2d_time_list``."""
    STATE.legacy = legacy
    for name in ("get_h2d_time_list", "get_d2h_time_list"):
        if legacy and name in vars(MemorySummary):
            _NEW_NAMES[name] = vars(MemorySummary)[name]
            delattr(MemorySummary, name)
        elif not legacy and name not in vars(MemorySummary) and name in _NEW_NAMES:
            setattr(MemorySummary, name, _NEW_NAMES[name])


_NEW_NAMES: dict = {}


class InferSession:
    def __init__(self, device_id: int, model_path: str, acl_json_path: str = None, debug: bool = False, loop: int = 1):
        STATE.calls.append(("InferSession", device_id))
        if not isinstance(device_id, int) or not 0 <= device_id < DEVICE_COUNT:
            raise RuntimeError(f"[ERROR] acl set device {device_id} failed, ret[107001] (device count {DEVICE_COUNT})")
        if loop < 1:
            raise RuntimeError("loop must be at least 1")
        try:
            self._om = OmModel(model_path)
        except FakeOmError as e:
            raise RuntimeError(f"[ERROR] load model from file failed, ret[145000]: {e}") from None
        self.device_id = device_id
        self.model_path = model_path
        self._thread = threading.get_ident()
        self._freed = False
        self._exec: list[float] = []
        om = self._om
        in_dt = _NP_TO_DTYPE[om.input_dtype]  # uint8 NHWC for an OM built with AIPP
        self._in = [TensorDesc(om.input_name, in_dt, om.input_shape, om.input_dtype.itemsize, om.max_input)]
        out_dt = _NP_TO_DTYPE[om.output_dtype]
        self._out = [TensorDesc(n, out_dt, s, om.output_dtype.itemsize, m)
                     for n, s, m in zip(om.output_names, om.output_shapes, om.max_output_shapes)]
        self.outputs_names = list(om.output_names)
        STATE.sessions.append(self)

    # -- contract checks ------------------------------------------------------------------------
    def _check(self, call: str) -> None:
        STATE.calls.append((call, self.device_id))
        if self._freed:
            raise RuntimeError(f"{call}: the session's resources were freed (free_resource)")
        if threading.get_ident() != self._thread:
            raise RuntimeError(f"{call}: called from another thread than the one that created the session (ACL context is per thread)")

    def get_inputs(self):
        self._check("get_inputs")
        return list(self._in)

    def get_outputs(self):
        self._check("get_outputs")
        return list(self._out)

    def infer(self, feeds, mode="static", custom_sizes=100000, out_array=True):
        self._check("infer")
        arrays = []
        for feed in feeds:
            if type(feed) is np.ndarray:
                arrays.append(np.ascontiguousarray(feed))
            elif type(feed) in (np.float32, np.float16, np.int32, np.int64, np.uint8):
                arrays.append(np.array(feed))
            else:
                raise RuntimeError(f"type:{type(feed)} invalid")
        if mode not in MODES:
            raise RuntimeError(f'wrong infer_mode:{mode}, only support "static","dymbatch","dymhw","dymdims","dymshape"')
        if len(arrays) != len(self._in):
            raise RuntimeError("input datas and intensors nums not matched!")
        om, desc, x = self._om, self._in[0], arrays[0]
        if x.dtype != om.input_dtype:
            raise RuntimeError(f"input {desc.name} expects {om.input_dtype} data, got {x.dtype} (size mismatch)")
        if mode == "static":
            if om.mode != "static" or list(x.shape) != desc.shape:
                raise RuntimeError(f"check input size failed: {list(x.shape)} vs model {desc.shape} (static)")
        elif mode == "dymbatch":
            if om.mode != "dymbatch":
                raise RuntimeError("not a dymbatch model!")
            if x.shape[0] not in om.batch_gears or list(x.shape[1:]) != desc.shape[1:]:
                raise RuntimeError(f"dynamic batch {x.shape[0]} is not one of the model's gears {om.batch_gears} (ret 145013)")
        elif mode == "dymhw":
            if om.mode != "dymhw":
                raise RuntimeError("not a dymhw model!")
            if tuple(x.shape[2:4]) not in om.hw_gears or x.shape[0] != desc.shape[0]:
                raise RuntimeError(f"dynamic hw {tuple(x.shape[2:4])} is not one of the model's gears {om.hw_gears}")
        elif mode == "dymshape":
            if isinstance(custom_sizes, int):
                custom_sizes = [custom_sizes] * len(self._out)
            elif not isinstance(custom_sizes, list):
                raise RuntimeError(f"custom_sizes:{custom_sizes} type:{type(custom_sizes)} invalid")
        t0 = time.perf_counter()
        with _LOCK:
            _MEMORY["h2d"].append((time.perf_counter() - t0) * 1e3 + 0.01 * x.nbytes / 1e6)
        t1 = time.perf_counter()
        outs = om.execute(arrays)
        self._exec.append((time.perf_counter() - t1) * 1e3)
        if mode == "dymshape":
            for o, size in zip(outs, custom_sizes):
                if o.nbytes > size:
                    raise RuntimeError(f"output needs {o.nbytes} bytes but custom_sizes reserved {size} (ret 107003)")
        with _LOCK:
            for o in outs:
                _MEMORY["d2h"].append(0.01 * o.nbytes / 1e6)
        return outs if out_array else [SimpleNamespace(array=o) for o in outs]

    def summary(self):
        self._check("summary")
        return SimpleNamespace(exec_time_list=list(self._exec))

    def sumary(self):
        self._check("sumary")
        return SimpleNamespace(exec_time_list=list(self._exec))

    def reset_summaryinfo(self):
        self._exec.clear()

    def free_resource(self):
        STATE.calls.append(("free_resource", self.device_id))
        if threading.get_ident() != self._thread:
            raise RuntimeError("free_resource: called from another thread than the one that created the session")
        self._freed = True

    @staticmethod
    def finalize():
        STATE.calls.append(("finalize", None))

    def __getattribute__(self, name):
        if name == "summary" and STATE.legacy:
            raise AttributeError(name)
        return object.__getattribute__(self, name)


class MemorySummary:
    @staticmethod
    def get_h2d_time_list():
        return list(_MEMORY["h2d"])

    @staticmethod
    def get_d2h_time_list():
        return list(_MEMORY["d2h"])

    @staticmethod
    def get_H2D_time_list():  # noqa: N802 - the older ais_bench spelling
        return list(_MEMORY["h2d"])

    @staticmethod
    def get_D2H_time_list():  # noqa: N802
        return list(_MEMORY["d2h"])

    @staticmethod
    def reset():
        _MEMORY["h2d"].clear()
        _MEMORY["d2h"].clear()
