"""The ``engine`` target: ONNX -> TensorRT engine with the TensorRT Python API (TensorRT 10).

ONNX parser -> builder config (FP16, INT8 with an entropy calibrator fed by the model's own preprocessing,
a persistent timing cache, an optimisation profile min/opt/max over the batch for dynamic models) ->
``build_serialized_network``. The spec goes beside the engine as ``<stem>.unideploy.json`` (an engine has
no metadata of its own); the ``tensorrt`` backend and ``read_spec`` find it.

Target options: ``workspace`` (GiB, default 4), ``int8`` with ``calib`` (folder/glob) and ``calib_count``,
``timing_cache`` (path, default beside the engine), ``min_batch`` / ``opt_batch`` / ``max_batch`` (dynamic
batch profile; default 1 / ``--batch`` / 2x that).

Example:
    >>> import unideploy
    >>> unideploy.export("yolov8n.pt", to="engine", half=True, dynamic=True, batch=32)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unideploy.core.errors import BackendError, InputError, ModelError
from unideploy.core.spec import ModelSpec, sidecar_paths
from unideploy.runtime.backends.base import TensorInfo
from unideploy.runtime.families.base import Adapter

KNOWN = {"workspace", "int8", "calib", "calib_count", "timing_cache", "min_batch", "opt_batch", "max_batch", "verbose"}


def profile_shapes(input_shape: list[int | None], imgsz: tuple[int, int], *, batch: int | None, dynamic: bool,
                   extra: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of the optimisation profile.

    Example:
        >>> profile_shapes([None, 3, None, None], (640, 640), batch=16, dynamic=True, extra={})
        ((1, 3, 640, 640), (16, 3, 640, 640), (32, 3, 640, 640))
    """
    c = input_shape[1] or 3
    h, w = imgsz
    if not dynamic and input_shape[0] is not None:
        s = (int(input_shape[0]), c, h, w)
        return s, s, s
    opt = int(extra.get("opt_batch") or batch or 1)
    lo = int(extra.get("min_batch") or 1)
    hi = int(extra.get("max_batch") or max(opt * 2, 1))
    if not lo <= opt <= hi:
        raise InputError(f"TensorRT profile needs min_batch <= opt_batch <= max_batch; got {lo}, {opt}, {hi}")
    if not dynamic:
        return (opt, c, h, w), (opt, c, h, w), (opt, c, h, w)
    return (lo, c, h, w), (opt, c, h, w), (hi, c, h, w)


def network_outputs(trt: Any, network: Any) -> list[TensorInfo]:
    """The outputs of a parsed TensorRT network as :class:`TensorInfo` (dynamic dimensions as None)."""
    outs = []
    for i in range(network.num_outputs):
        t = network.get_output(i)
        outs.append(TensorInfo(t.name, tuple(int(d) if d >= 0 else None for d in t.shape), np.dtype(trt.nptype(t.dtype))))
    return outs


def family_adapter(spec: ModelSpec, outputs: Sequence[TensorInfo] = ()) -> Adapter:
    """The adapter ``predict`` will use on the built engine: the spec's family, else the one that recognises the
    outputs, with the family's preprocessing defaults (``resize``, colour order, scale) filled in; the generic
    :class:`Adapter` when no family recognises the model (the engine then needs ``--family`` at predict time).

    Example:
        >>> family_adapter(ModelSpec(imgsz=(416, 416), family="yolox")).spec.channel_order
        'bgr'
    """
    from unideploy.runtime.families import resolve_adapter

    try:
        cls = resolve_adapter(spec, outputs)
    except ModelError:
        cls = Adapter
    return cls(spec, outputs)


def make_calibrator(trt: Any, spec: ModelSpec, source: Any, count: int, batch: int, cache: Path,
                    outputs: Sequence[TensorInfo] = ()) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed with images preprocessed by the model family's own adapter (its resize,
    colour order and normalisation, as ``predict`` will feed the engine); ``outputs`` help recognise the family
    when the spec does not name it."""
    import torch

    from unideploy.core.sources import Source

    adapter = family_adapter(spec, outputs)
    arrays = []
    for item in Source(source):
        if len(arrays) >= count:
            break
        try:
            arrays.append(adapter.preprocess(item.load())[0])
        except Exception:
            continue
    if not arrays:
        raise InputError(f"no calibration image could be read from {source!r}")

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.i = 0
            self.buf: Any = None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.i + batch > len(arrays):
                return None
            x = np.stack(arrays[self.i : self.i + batch]).astype(np.float32)
            self.i += batch
            self.buf = torch.from_numpy(x).cuda()
            return [int(self.buf.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def onnx_to_engine(onnx_path: Path, spec: ModelSpec, opts: Any) -> Path:
    """Build a TensorRT engine from ONNX and write the sidecar spec (the ``engine`` target).

    Raises:
        BackendUnavailableError: tensorrt is not installed (names the extra).
        ModelError: the ONNX parser rejects the model (its errors are listed).
        BackendError: the build fails.
        InputError: invalid options.
    """
    from unideploy.tools.convert import require

    extra = dict(opts.extra)
    unknown = sorted(set(extra) - KNOWN)
    if unknown:
        raise InputError(f"unknown engine option(s) {unknown}; valid: {', '.join(sorted(KNOWN))}")
    int8 = str(extra.get("int8", "")).lower() in ("1", "true", "yes")
    if int8 and not extra.get("calib"):
        raise InputError("TensorRT INT8 needs calibration images: --option calib=DIR")
    trt = require("tensorrt", "tensorrt", "export to a TensorRT engine")
    out = opts.output(".engine")
    out.parent.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.VERBOSE if extra.get("verbose") else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"{onnx_path.name}: TensorRT's ONNX parser failed: {'; '.join(errs[:3])}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(float(extra.get("workspace", 4)) * (1 << 30)))
    if opts.half:
        config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    shape = [d if d >= 0 else None for d in inp.shape]
    imgsz = spec.imgsz or (shape[2], shape[3])
    mn, op, mx = profile_shapes(shape, imgsz, batch=opts.batch, dynamic=opts.dynamic or shape[0] is None, extra=extra)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, mn, op, mx)
    config.add_optimization_profile(profile)
    cache_path = Path(extra.get("timing_cache") or out.with_suffix(".timing.cache"))
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        config.int8_calibrator = make_calibrator(trt, spec, extra["calib"], int(extra.get("calib_count", 256)), op[0],
                                                 out.with_suffix(".calib.cache"), network_outputs(trt, network))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT could not build an engine from {onnx_path.name} (see the TensorRT log above)")
    out.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    d = spec.to_dict()
    d["batch"] = None if mn[0] != mx[0] else mn[0]
    d["extra"] = {**d.get("extra", {}), "tensorrt": {"version": trt.__version__, "fp16": bool(opts.half), "int8": int8,
                                                      "profile": [list(mn), list(op), list(mx)]}}
    sidecar_paths(out)[0].write_text(json.dumps(d, indent=2, sort_keys=True))
    return out


__all__ = ["family_adapter", "make_calibrator", "network_outputs", "onnx_to_engine", "profile_shapes"]
