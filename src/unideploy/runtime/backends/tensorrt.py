"""NVIDIA TensorRT backend (TensorRT 10 tensor-address API) for ``.engine`` / ``.plan`` files.

Device memory, the CUDA stream and the async copies use PyTorch's CUDA allocator (no pycuda / cuda-python):
inputs go through a pinned host buffer with a non-blocking H2D copy, ``set_input_shape`` +
``set_tensor_address`` + ``execute_async_v3`` on the session's stream, outputs come back by a non-blocking
D2H copy into pinned memory; CUDA events time the three phases into ``last_timings``. With
``cuda_graph=True`` the enqueue is captured once per input shape and replayed.

Engines written by Ultralytics start with a 4-byte length and their metadata JSON; that header is read
(as the spec's metadata) and skipped. Engines written by ``unideploy export --to engine`` have a sidecar spec.

Example:
    >>> with unideploy.load("yolov8n.engine", backend="tensorrt", device="cuda:0") as p:  # doctest: +SKIP
    ...     dets = p("bus.jpg")
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import BackendError, DeviceError, ModelError
from unideploy.core.options import BackendOptions
from unideploy.runtime.backends.base import Backend, Session, TensorInfo


def split_ultralytics_header(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(metadata, engine bytes): Ultralytics prefixes engines with ``uint32 little-endian length + JSON``.

    Example:
        >>> meta = b'{"imgsz": [640, 640]}'
        >>> split_ultralytics_header(len(meta).to_bytes(4, "little") + meta + b"ENGINE")
        ({'imgsz': [640, 640]}, b'ENGINE')
    """
    if len(data) > 8:
        n = int.from_bytes(data[:4], "little")
        if 2 <= n < min(len(data) - 4, 1 << 20) and data[4:5] == b"{":
            try:
                meta = json.loads(data[4 : 4 + n].decode("utf-8"))
                if isinstance(meta, dict):
                    return meta, data[4 + n :]
            except (UnicodeDecodeError, ValueError):
                pass
    return {}, data


class TensorRTSession(Session):
    backend = "tensorrt"

    def __init__(self, path: Path, device: str, trt: Any, options: TensorRTOptions) -> None:
        import torch

        super().__init__(path, device)
        self.torch = torch
        if not torch.cuda.is_available():
            raise DeviceError("the tensorrt backend needs a CUDA device; torch sees none here")
        self.tdev = torch.device(device if device.startswith("cuda") else f"cuda:{device}" if device.isdigit() else "cuda:0")
        if self.tdev.index is not None and self.tdev.index >= torch.cuda.device_count():
            raise DeviceError(f"tensorrt device {device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
        meta, blob = split_ultralytics_header(path.read_bytes())
        self._meta = {k: v if isinstance(v, str) else repr(v) for k, v in meta.items()}
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.tdev):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(blob)
            if self.engine is None:
                raise ModelError(f"{path}: TensorRT could not deserialize it (built by another TensorRT version or GPU?)")
            self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.tdev)
        self.trt = trt
        self._in_names, self._out_names = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dims = tuple(int(d) if d >= 0 else None for d in self.engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            info = TensorInfo(name, dims, dtype)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._in_names.append(name)
                self.inputs.append(info)
            else:
                self._out_names.append(name)
                self.outputs.append(info)
        self.use_graph = bool(options.cuda_graph)
        self._graphs: dict[tuple, Any] = {}
        self._buffers: dict[str, Any] = {}

    def metadata(self) -> dict[str, str]:
        return dict(self._meta)

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: np.dtype, pinned: bool = False) -> Any:
        torch = self.torch
        tdtype = torch.from_numpy(np.zeros(0, dtype)).dtype
        n = int(np.prod(shape))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n or buf.dtype != tdtype:
            buf = torch.empty(max(n, 1), dtype=tdtype, pin_memory=True) if pinned else \
                torch.empty(max(n, 1), dtype=tdtype, device=self.tdev)
            self._buffers[key] = buf
        return buf[:n].view(shape)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch, ctx = self.torch, self.context
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        t0 = time.perf_counter()
        with torch.cuda.device(self.tdev), torch.cuda.stream(self.stream):
            ev[0].record(self.stream)
            shapes = []
            for info in self.inputs:
                arr = feeds[info.name]
                host = self._buffer(f"h:{info.name}", arr.shape, arr.dtype, pinned=True)
                host.numpy()[...] = arr
                dev = self._buffer(f"d:{info.name}", arr.shape, arr.dtype)
                dev.copy_(host, non_blocking=True)
                if not ctx.set_input_shape(info.name, tuple(arr.shape)):
                    raise BackendError(f"TensorRT rejected input shape {arr.shape} for '{info.name}' (outside the engine's profile)")
                ctx.set_tensor_address(info.name, int(dev.data_ptr()))
                shapes.append(tuple(arr.shape))
            ev[1].record(self.stream)
            outs = []
            for info in self.outputs:
                shape = tuple(ctx.get_tensor_shape(info.name))
                dev = self._buffer(f"d:{info.name}", shape, info.dtype)
                ctx.set_tensor_address(info.name, int(dev.data_ptr()))
                outs.append(dev)
            key = tuple(shapes)
            if self.use_graph and key in self._graphs:
                self._graphs[key].replay()
            elif self.use_graph:
                if not ctx.execute_async_v3(self.stream.cuda_stream):  # warm-up enqueue before capture
                    raise BackendError("TensorRT execute_async_v3 failed")
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=self.stream):
                    ctx.execute_async_v3(self.stream.cuda_stream)
                self._graphs[key] = g
                g.replay()
            elif not ctx.execute_async_v3(self.stream.cuda_stream):
                raise BackendError("TensorRT execute_async_v3 failed")
            ev[2].record(self.stream)
            hosts = []
            for info, dev in zip(self.outputs, outs):
                h = self._buffer(f"h:{info.name}", tuple(dev.shape), info.dtype, pinned=True)
                h.copy_(dev, non_blocking=True)
                hosts.append(h)
            ev[3].record(self.stream)
        ev[3].synchronize()
        t = self.last_timings
        t.h2d, t.compute, t.d2h = ev[0].elapsed_time(ev[1]) / 1e3, ev[1].elapsed_time(ev[2]) / 1e3, ev[2].elapsed_time(ev[3]) / 1e3
        t.total = time.perf_counter() - t0
        return [h.numpy().copy() for h in hosts]

    def _close(self) -> None:
        self._graphs.clear()
        self._buffers.clear()
        self.context = self.engine = self.runtime = None


@dataclass(frozen=True)
class TensorRTOptions(BackendOptions):
    """Options of :class:`TensorRTBackend` (see its docstring)."""

    cuda_graph: bool = False


class TensorRTBackend(Backend):
    """NVIDIA TensorRT engines. Devices: ``cuda:N`` (or ``N``). Needs ``pip install 'unideploy[tensorrt]'`` and
    a CUDA build of torch (device memory and streams come from PyTorch).

    Options:
        cuda_graph: capture the enqueue in a CUDA graph per input shape and replay it.
    """

    name = "tensorrt"
    runtime_module = "tensorrt"
    extra = "tensorrt"
    suffixes = (".engine", ".plan")
    default_device = "cuda:0"
    Options = TensorRTOptions

    @classmethod
    def devices(cls) -> list[str]:
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, **options: Any) -> TensorRTSession:
        trt = cls.require()
        opts: TensorRTOptions = cls.parse_options(options)
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return TensorRTSession(path, str(device or "cuda:0"), trt, opts)
