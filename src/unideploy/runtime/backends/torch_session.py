"""An open PyTorch model on one device: pinned host buffers, one CUDA graph per input shape, ``torch.compile``.

On CUDA a session keeps pinned host buffers, captures one CUDA graph of the forward pass per input shape
(replayed on later calls of the same shape) and times the host->device copy, compute and device->host copy
with CUDA events. ``run_tensor`` runs a tensor already on the device (the GPU predictor's path).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import BackendError, InputError
from unideploy.core.options import BackendOptions
from unideploy.core.spec import parse_literal, parse_size
from unideploy.runtime.backends.base import Session, TensorInfo
from unideploy.runtime.backends.torch_device import device_module
from unideploy.runtime.backends.torch_load import LoadedModel, first_line

__all__ = ["PRECISIONS", "TorchOptions", "TorchSession"]

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "float32": "float32", "float16": "float16",
              "half": "float16", "bfloat16": "bfloat16"}



@dataclass(frozen=True)
class TorchOptions(BackendOptions):
    """Options of :class:`~unideploy.runtime.backends.torch.TorchBackend` (see its docstring)."""

    precision: str | None = None
    half: bool = False
    trust_pickle: bool = False
    cuda_graph: bool | None = True
    compile: bool = False
    compile_mode: str | None = None
    imgsz: Any = None
    threads: int | None = None
    fuse: bool | None = True


def _first_tensor(out: Any) -> list[Any]:
    """Model outputs as a flat list of tensors (Ultralytics eval heads return ``(y, raw)``: keep ``y``)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (list, tuple)) and out:
        first = out[0]
        if isinstance(first, torch.Tensor) and all(not isinstance(o, torch.Tensor) for o in out[1:]):
            return [first]  # (y, preds-dict)
        flat = [o for o in out if isinstance(o, torch.Tensor)]
        if flat:
            return flat
        return _first_tensor(first)
    raise BackendError(f"the model returned {type(out).__name__}, expected tensor(s)")


class TorchSession(Session):
    """An open PyTorch model on one device; see :class:`~unideploy.runtime.backends.torch.TorchBackend` for the options."""

    backend = "torch"

    def __init__(self, path: Path, device: str, loaded: LoadedModel, torch_device: Any, options: TorchOptions):
        import torch

        super().__init__(path, device)
        self.torch = torch
        self.tdev = torch_device
        self.kind = loaded.kind
        self._meta = dict(loaded.meta)
        precision = str(options.precision or ("fp16" if options.half else "fp32")).lower()
        if precision not in PRECISIONS:
            raise InputError(f"precision must be fp32, fp16 or bf16; got {precision!r}")
        self.precision = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[PRECISIONS[precision]]
        self.dtype = getattr(torch, PRECISIONS[precision])
        self.device_kind = torch_device.type
        module = loaded.module
        try:
            module = module.to(torch_device)
            if self.dtype != torch.float32:
                module = module.to(self.dtype)
        except Exception as e:
            raise BackendError(f"could not move {path.name} to {device} in {self.precision}: {first_line(e)}") from None
        self.module = module
        self.cuda_graph = bool(options.cuda_graph) and self.device_kind == "cuda"
        self.compiled = False
        if options.compile:
            mode = options.compile_mode or ("reduce-overhead" if self.cuda_graph else "default")
            self.module = torch.compile(self.module, mode=mode, dynamic=False)
            self.compiled = True
            self.cuda_graph = False  # reduce-overhead already captures CUDA graphs
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, list[Any]]] = {}
        self._pinned: dict[str, Any] = {}
        self._stream = torch.cuda.Stream(device=torch_device) if self.device_kind == "cuda" else None
        # declared inputs: fixed where the file fixes them, dynamic otherwise
        shape = loaded.input_shape or (None, 3, None, None)
        self.inputs = [TensorInfo("images", tuple(shape), np.dtype(np.float32))]
        probe = self._probe_shape(shape, options)
        outs = self.run_tensor(torch.zeros(probe, device=torch_device, dtype=torch.float32), clone=True)
        dynamic_hw = shape[2] is None or shape[3] is None
        self.outputs = []
        for i, o in enumerate(outs):
            dims: list[int | None] = list(o.shape)
            if dims:
                dims[0] = None if shape[0] is None else dims[0]
            if dynamic_hw:  # anchors / spatial dims follow the input size: keep only the channel axis
                dims = [d if (j == 1 and len(dims) == 3) else None for j, d in enumerate(dims)] if len(dims) == 3 else [None] * len(dims)
            self.outputs.append(TensorInfo(f"output{i}", tuple(dims), np.dtype(np.float32)))
        self._graphs.clear()  # the probe shape is rarely the working shape

    def _probe_shape(self, shape: tuple[int | None, ...], options: TorchOptions) -> tuple[int, ...]:
        imgsz = options.imgsz or (parse_literal(self._meta["imgsz"]) if "imgsz" in self._meta else None) or 640
        h, w = parse_size(imgsz, "imgsz")
        stride = int(parse_literal(self._meta.get("stride", "32"))) if str(self._meta.get("stride", "32")).isdigit() else 32
        h, w = -(-h // stride) * stride, -(-w // stride) * stride
        return (shape[0] or 1, shape[1] or 3, shape[2] or h, shape[3] or w)

    def metadata(self) -> dict[str, str]:
        return dict(self._meta)

    # -- device helpers ----------------------------------------------------------------------------
    def synchronize(self) -> None:
        if self.device_kind != "cpu":
            device_module(self.torch, self.device_kind).synchronize(self.tdev)

    def _forward(self, x: Any) -> list[Any]:
        return _first_tensor(self.module(x))

    def _graph_for(self, x: Any) -> tuple[Any, Any, list[Any]] | None:
        """Capture (once per shape) a CUDA graph of the forward pass on a static input buffer."""
        torch = self.torch
        key = tuple(x.shape)
        if key in self._graphs:
            return self._graphs[key]
        static_in = torch.empty_like(x)
        static_in.copy_(x)
        s = torch.cuda.Stream(device=self.tdev)
        s.wait_stream(torch.cuda.current_stream(self.tdev))
        try:
            with torch.cuda.stream(s):
                for _ in range(3):  # warm-up (cudnn autotune, lazy init) outside the capture
                    self._forward(static_in)
            torch.cuda.current_stream(self.tdev).wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
        except Exception as e:  # models with host sync / dynamic control flow cannot be captured
            warnings.warn(f"CUDA graph capture failed for {self.path.name} ({first_line(e)}); running eagerly", stacklevel=2)
            self.cuda_graph = False
            return None
        self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def run_tensor(self, x: Any, *, clone: bool = True) -> list[Any]:
        """Forward pass on a tensor already on this session's device (any float dtype); no host copies.

        With CUDA graphs the outputs live in the graph's static buffers, overwritten by the next call of the
        same shape: ``clone=False`` returns them as they are (consume them before the next call).

        Example:
            >>> outs = session.run_tensor(torch.zeros(8, 3, 640, 640, device="cuda"))  # doctest: +SKIP
        """
        torch = self.torch
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        with torch.inference_mode():
            if self.cuda_graph:
                entry = self._graph_for(x)
                if entry is not None:
                    graph, static_in, static_out = entry
                    static_in.copy_(x)
                    graph.replay()
                    return [o.clone() for o in static_out] if clone else list(static_out)
            return self._forward(x)

    def _pinned_buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        buf = self._pinned.get(name)
        n = int(np.prod(shape))
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.torch.empty(max(n, 1), dtype=dtype, pin_memory=True)
            self._pinned[name] = buf
        return buf[:n].view(shape)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        arr = feeds[self.inputs[0].name]
        t = self.last_timings
        t.h2d = t.compute = t.d2h = None
        try:
            if self.device_kind == "cpu":
                t0 = time.perf_counter()
                outs = self.run_tensor(torch.from_numpy(arr), clone=False)
                res = [o.float().numpy() for o in outs]
                t.total = t.compute = time.perf_counter() - t0
                return [r if r.flags.owndata or r.base is None else r.copy() for r in res]
            if self.device_kind == "cuda":
                return self._run_cuda(arr)
            t0 = time.perf_counter()  # npu / mlu: synchronous copies, host timers around device syncs
            x = torch.from_numpy(arr).to(self.tdev)
            self.synchronize()
            t1 = time.perf_counter()
            outs = self.run_tensor(x, clone=False)
            self.synchronize()
            t2 = time.perf_counter()
            res = [o.float().cpu().numpy() for o in outs]
            t3 = time.perf_counter()
            t.h2d, t.compute, t.d2h, t.total = t1 - t0, t2 - t1, t3 - t2, t3 - t0
            return res
        except (InputError, BackendError):
            raise
        except Exception as e:
            raise BackendError(f"torch failed to run {self.path.name} on {self.device}: {first_line(e)}") from None

    def _run_cuda(self, arr: np.ndarray) -> list[np.ndarray]:
        """Pinned host buffer -> async H2D -> forward (graph replay) -> async D2H into pinned buffers; events time each."""
        torch = self.torch
        stream = self._stream
        host_in = self._pinned_buffer("in", arr.shape, torch.float32)
        host_in.numpy()[...] = arr
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        t0 = time.perf_counter()
        with torch.cuda.stream(stream):
            ev[0].record(stream)
            x = host_in.to(self.tdev, non_blocking=True)
            ev[1].record(stream)
            outs = self.run_tensor(x, clone=False)
            ev[2].record(stream)
            host_outs = []
            for i, o in enumerate(outs):
                h = self._pinned_buffer(f"out{i}", tuple(o.shape), torch.float32)
                h.copy_(o.float(), non_blocking=True)
                host_outs.append(h)
            ev[3].record(stream)
        ev[3].synchronize()
        t = self.last_timings
        t.h2d = ev[0].elapsed_time(ev[1]) / 1e3
        t.compute = ev[1].elapsed_time(ev[2]) / 1e3
        t.d2h = ev[2].elapsed_time(ev[3]) / 1e3
        t.total = time.perf_counter() - t0
        return [h.numpy().copy() for h in host_outs]

    def _close(self) -> None:
        self._graphs.clear()
        self._pinned.clear()
        self.module = None
        if self.device_kind == "cuda":
            try:
                self.torch.cuda.empty_cache()
            except Exception:
                pass
