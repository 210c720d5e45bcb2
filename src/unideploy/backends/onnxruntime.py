"""ONNX Runtime backend: ordered execution providers validated against what is installed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendError, DeviceError, ModelError
from .base import Backend, Session, TensorInfo

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

#: device prefix -> execution provider
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cann": "CANNExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


def _dims(shape: list[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def providers_for(device: str | list[str] | None, available: list[str]) -> list[Any]:
    """Turn "cpu", "cuda:0", "cann:1", "cuda:0,cpu" or a list of provider names into an ORT provider list.

    Raises:
        DeviceError: a requested provider is not available (the message lists the available ones).
    """
    if device is None:
        items: list[str] = ["cpu"]
    elif isinstance(device, str):
        items = [d.strip() for d in device.split(",") if d.strip()]
    else:
        items = list(device)
    out: list[Any] = []
    for item in items:
        kind, _, idx = item.partition(":")
        provider = item if item.endswith("ExecutionProvider") else PROVIDERS.get(kind.lower())
        if provider is None:
            raise DeviceError(
                f"unknown onnxruntime device {item!r}; use one of {sorted(PROVIDERS)} (with ':N' for a device id) "
                f"or a provider name; available providers: {', '.join(available)}"
            )
        if provider not in available:
            raise DeviceError(
                f"onnxruntime device {item!r} needs {provider}, which this onnxruntime build does not have; "
                f"available providers: {', '.join(available)}"
            )
        opts = {"device_id": int(idx)} if idx.isdigit() and provider != "CPUExecutionProvider" else {}
        out.append((provider, opts) if opts else provider)
    if "CPUExecutionProvider" not in [p if isinstance(p, str) else p[0] for p in out]:
        out.append("CPUExecutionProvider")  # fallback for nodes the accelerator does not take
    return out


class OnnxRuntimeSession(Session):
    backend = "onnxruntime"
    thread_safe = True  # InferenceSession.run is thread-safe

    def __init__(self, path: Path, device: str, ort: Any, providers: list[Any], threads: int | None, options: dict[str, Any]):
        super().__init__(path, device)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        if options.get("inter_threads"):
            so.inter_op_num_threads = int(options["inter_threads"])
        so.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(f"{path}: onnxruntime could not load it as an ONNX model: {msg}") from None
        self.providers = self._sess.get_providers()
        self.inputs = [TensorInfo(i.name, _dims(i.shape), np.dtype(_ORT_DTYPES.get(i.type, np.float32))) for i in self._sess.get_inputs()]
        self.outputs = [TensorInfo(o.name, _dims(o.shape), np.dtype(_ORT_DTYPES.get(o.type, np.float32))) for o in self._sess.get_outputs()]
        self._names = [o.name for o in self.outputs]

    def metadata(self) -> dict[str, str]:
        return dict(self._sess.get_modelmeta().custom_metadata_map)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        try:
            out = self._sess.run(self._names, feeds)
        except Exception as e:
            raise BackendError(f"onnxruntime failed to run {self.path.name}: {str(e).splitlines()[0]}") from None
        self.last_timings.total = self.last_timings.compute = time.perf_counter() - t0
        return out

    def _close(self) -> None:
        self._sess = None


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime. Devices: ``cpu``, ``cuda:N``, ``tensorrt:N``, ``openvino``, ``cann:N`` … or a list.

    Options:
        threads: intra-op threads (default: ORT's choice, all cores).
        inter_threads: inter-op threads.

    Example:
        >>> with OnnxRuntimeBackend.open("model.onnx", "cpu") as s:  # doctest: +SKIP
        ...     outputs = s.run(x)
    """

    name = "onnxruntime"
    runtime_module = "onnxruntime"
    extra = "onnxruntime"
    suffixes = (".onnx",)

    @classmethod
    def devices(cls) -> list[str]:
        ort = cls.require()
        inverse = {v: k for k, v in PROVIDERS.items() if k != "trt"}
        return [inverse.get(p, p) for p in ort.get_available_providers()]

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, **options: Any) -> OnnxRuntimeSession:
        ort = cls.require()
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        providers = providers_for(device, ort.get_available_providers())
        threads = options.pop("threads", None) or os.environ.get("UNIDEPLOY_ORT_THREADS")
        return OnnxRuntimeSession(path, device or "cpu", ort, providers, int(threads) if threads else None, options)
