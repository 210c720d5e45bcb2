"""ONNX Runtime backend: ordered execution providers validated against what is installed."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import BackendError, DeviceError, InputError, ModelError
from unideploy.core.onnx_file import check_external_refs, read_onnx, read_onnx_metadata
from unideploy.core.options import BackendOptions
from unideploy.runtime.backends.base import Backend, Session, TensorInfo

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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def throughput_runs(threads: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(runs in flight, intra-op threads per run) for the CPU provider's throughput hint.

    One run spread over every core leaves cores waiting at each operator's end (and busy-waiting threads then
    take CPU from decode); independent runs on a share of the cores each keep them busy. At most 4 runs (each
    holds its own activations); ``threads`` given: that many per run, as many runs as fit.

    Example:
        >>> throughput_runs(cores=2), throughput_runs(cores=16), throughput_runs(threads=2, cores=2)
        ((2, 1), (4, 4), (1, 2))
    """
    cores = cores or usable_cores()
    if threads:
        return max(1, cores // int(threads)), int(threads)
    runs = min(cores, 4)
    return runs, max(1, cores // runs)


class OnnxRuntimeSession(Session):
    backend = "onnxruntime"
    thread_safe = True  # InferenceSession.run is thread-safe

    def __init__(self, path: Path, device: str, ort: Any, providers: list[Any], threads: int | None,
                 options: OnnxRuntimeOptions):
        super().__init__(path, device)
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        runs = None  # the throughput hint's runs in flight (None: the latency hint)
        if str(options.hint).lower() == "throughput" and first == "CPUExecutionProvider":
            runs, threads = throughput_runs(threads)
        self._runs = runs
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        if options.inter_threads:
            so.inter_op_num_threads = int(options.inter_threads)
        so.log_severity_level = 3
        # memory patterns pre-plan one block per run for all activations; on the CPU provider that held ~27 MB
        # more peak RSS for YOLOv8n-640 with two runs in flight at under 1% latency (benchmarks/vs_ultralytics.py)
        mem_pattern = options.mem_pattern
        so.enable_mem_pattern = first != "CPUExecutionProvider" if mem_pattern is None else bool(mem_pattern)
        spin = options.spin if options.spin is not None or runs is None else False  # runs in flight: no busy-waiting
        if spin is not None:  # busy-waiting intra-op threads: fast alone, harmful on a shared CPU
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(f"{path}: onnxruntime could not load it as an ONNX model: {msg}") from None
        self.providers = self._sess.get_providers()
        self._threads = int(threads) if threads else None
        self.inputs = [TensorInfo(i.name, _dims(i.shape), np.dtype(_ORT_DTYPES.get(i.type, np.float32))) for i in self._sess.get_inputs()]
        self.outputs = [TensorInfo(o.name, _dims(o.shape), np.dtype(_ORT_DTYPES.get(o.type, np.float32))) for o in self._sess.get_outputs()]
        self._names = [o.name for o in self.outputs]
        self._ort = ort
        self._binding_device: tuple[str, int] | None = None
        if options.io_binding and first in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            dev_id = providers[0][1].get("device_id", 0) if not isinstance(providers[0], str) else 0
            self._binding_device = ("cuda", int(dev_id))

    def optimal_requests(self) -> int:
        """Runs in flight for a stream. On the CPU provider one run already spreads each operator over every core
        when the input is large, and a second run only adds its activations to peak RSS (YOLOv8n-640 on 2 cores:
        the same images/s with 1 or 2, +35 MB with 2); a small input leaves cores idle between operators, where a
        second run helps (the 320 demo model: 1.2-1.3x images/s with 2). So: 2 below ~100,000 input pixels per
        core, else 1. Other providers: 2. Under the throughput hint: its runs (:func:`throughput_runs`)."""
        if self._runs:
            return self._runs
        if self.providers and self.providers[0] != "CPUExecutionProvider":
            return 2
        h, w = self.inputs[0].image_hw() if self.inputs else (None, None)
        pixels = (h or 640) * (w or 640)  # a dynamic size: assume the usual 640
        threads = self._threads or os.cpu_count() or 1
        return 2 if pixels / threads < 100_000 else 1

    def metadata(self) -> dict[str, str]:
        return dict(self._sess.get_modelmeta().custom_metadata_map)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._binding_device is not None:
            return self._run_bound(feeds)
        t0 = time.perf_counter()
        try:
            out = self._sess.run(self._names, feeds)
        except Exception as e:
            raise BackendError(f"onnxruntime failed to run {self.path.name}: {str(e).splitlines()[0]}") from None
        self.last_timings.total = self.last_timings.compute = time.perf_counter() - t0
        return out

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """I/O binding on a CUDA device: copy inputs, run, copy outputs, each timed (``last_timings``).

        Not run on hardware in this repository's CI (no GPU); the CPU path above is the tested one.
        """
        kind, dev_id = self._binding_device  # type: ignore[misc]
        ort = self._ort
        try:
            t0 = time.perf_counter()
            values = {k: ort.OrtValue.ortvalue_from_numpy(v, kind, dev_id) for k, v in feeds.items()}
            t1 = time.perf_counter()
            binding = self._sess.io_binding()
            for k, v in values.items():
                binding.bind_ortvalue_input(k, v)
            for name in self._names:
                binding.bind_output(name, kind, dev_id)
            binding.synchronize_inputs()
            self._sess.run_with_iobinding(binding)
            binding.synchronize_outputs()
            t2 = time.perf_counter()
            out = binding.copy_outputs_to_cpu()
            t3 = time.perf_counter()
        except Exception as e:
            raise BackendError(f"onnxruntime failed to run {self.path.name}: {str(e).splitlines()[0]}") from None
        self.last_timings.h2d, self.last_timings.compute, self.last_timings.d2h = t1 - t0, t2 - t1, t3 - t2
        self.last_timings.total = t3 - t0
        return list(out)

    def _close(self) -> None:
        self._sess = None


@dataclass(frozen=True)
class OnnxRuntimeOptions(BackendOptions):
    """Options of :class:`OnnxRuntimeBackend` (see its docstring)."""

    threads: int | None = None
    inter_threads: int | None = None
    spin: bool | None = None
    mem_pattern: bool | None = None
    io_binding: bool = False
    precision: str | None = None
    hint: str = "latency"


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime. Devices: ``cpu``, ``cuda:N``, ``tensorrt:N``, ``openvino``, ``cann:N`` … or a list.

    Options:
        threads: intra-op threads (default: ORT's choice, all cores).
        inter_threads: inter-op threads.
        spin: let idle intra-op threads busy-wait (ORT's default is on); ``False`` frees the CPU for the
            decode/postprocess threads of a pipeline on a small or shared machine.
        mem_pattern: ORT's pre-planned activation block per run (default: off on the CPU provider, where it
            only raised peak RSS, on elsewhere).
        io_binding: on ``cuda``/``tensorrt`` devices, run through I/O binding so ``last_timings`` splits the
            host->device copy, compute and device->host copy (CPU runs are "not separable").
        precision: only "fp32" (or unset): ONNX Runtime runs the model file's own precision.
        hint: "latency" (default: one run at a time spreads each operator over every core) or "throughput" (CPU
            provider: several runs in flight, each on its share of the cores — :func:`throughput_runs`; what
            ``predict``/``eval`` over files use by default). Outputs are identical either way; on 2 cores,
            YOLOv8n-640 over a folder ran 1.4x the images/s with 2 runs x 1 thread (docs/bench.md).

    Example:
        >>> with OnnxRuntimeBackend.open("model.onnx", "cpu") as s:  # doctest: +SKIP
        ...     outputs = s.run(x)
    """

    name = "onnxruntime"
    runtime_module = "onnxruntime"
    extra = "onnxruntime"
    suffixes = (".onnx",)
    Options = OnnxRuntimeOptions

    @classmethod
    def read_metadata(cls, path: str | Path) -> dict[str, str]:
        """ONNX ``metadata_props`` (read without the ``onnx`` package); {} for a file that is not ``.onnx``."""
        return read_onnx_metadata(path) if Path(path).suffix.lower() == ".onnx" else {}

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
        opts: OnnxRuntimeOptions = cls.parse_options(options)
        meta: dict[str, str] = {}
        if path.suffix.lower() == ".onnx":  # one read and parse: metadata and external-data references
            onnx = read_onnx(path).require_graph()
            check_external_refs(path, onnx.external_refs)  # external data must stay inside the model's folder
            meta = dict(onnx.metadata)
        providers = providers_for(device, ort.get_available_providers())
        if opts.precision and str(opts.precision).lower() not in ("fp32", "f32", "float32"):
            raise InputError(f"onnxruntime runs the model file's own precision; got precision={opts.precision!r} "
                             "(export an fp16 model with `unideploy export --half` instead)")
        if str(opts.hint).lower() not in ("latency", "throughput"):
            raise InputError(f"onnxruntime hint must be latency or throughput, got {opts.hint!r}")
        threads = opts.threads or os.environ.get("UNIDEPLOY_ORT_THREADS")
        session = OnnxRuntimeSession(path, device or "cpu", ort, providers, int(threads) if threads else None, opts)
        session.file_metadata = meta
        return session
