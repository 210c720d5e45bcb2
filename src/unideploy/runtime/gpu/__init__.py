"""GPU end-to-end predictor for PyTorch YOLO detectors: nvJPEG decode, OpenCV-exact letterbox, normalisation,
CUDA-graph forward and batched NMS on the device, stages overlapped (see ``predictor.py``).

The tensor code is device-agnostic and tested on CPU tensors; the CUDA paths need a GPU.

Example:
    >>> from unideploy.runtime.gpu import GpuPredictor
    >>> p = GpuPredictor("yolov8n.pt", device="cuda:0", batch=64, precision="fp16")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GpuPredictor": "predictor",
    "letterbox_tensor": "letterbox",
    "letterbox_batch": "letterbox",
    "letterbox_geometry": "letterbox",
    "resize_linear": "letterbox",
    "normalize_batch": "letterbox",
    "postprocess_batch": "postprocess",
    "decode_batch": "decode",
}

__all__ = sorted([*_LAZY, "wants_gpu_predictor"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'unideploy.runtime.gpu' has no attribute {name!r}")


def wants_gpu_predictor(backend: str | None, device: str | None, model: Any = None) -> bool:
    """True when ``load`` should build a :class:`GpuPredictor`: the torch backend on a CUDA device.

    Example:
        >>> wants_gpu_predictor("torch", "cuda:0"), wants_gpu_predictor("onnxruntime", "cuda:0")
        (True, False)
    """
    from pathlib import Path

    if backend is None and model is not None:
        from unideploy.runtime.backends.torch import TORCH_SUFFIXES

        backend = "torch" if Path(str(model)).suffix.lower() in TORCH_SUFFIXES else None
    dev = str(device or "").strip().lower()
    return backend == "torch" and (dev.startswith("cuda") or dev.isdigit())
