"""GPU end-to-end pipeline for PyTorch YOLO detectors: nvJPEG decode, OpenCV-exact letterbox, normalisation,
CUDA-graph forward and batched NMS on the device, stages overlapped (see ``pipeline.py``).

The tensor code is device-agnostic and tested on CPU tensors; the CUDA paths need a GPU.

Example:
    >>> from unideploy.gpu import GpuPredictor
    >>> p = GpuPredictor("yolov8n.pt", device="cuda:0", batch=64, precision="fp16")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GpuPredictor": "pipeline",
    "letterbox_tensor": "letterbox",
    "letterbox_batch": "letterbox",
    "letterbox_geometry": "letterbox",
    "resize_linear": "letterbox",
    "normalize_batch": "letterbox",
    "postprocess_batch": "postprocess",
    "decode_batch": "decode",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'unideploy.gpu' has no attribute {name!r}")


def wants_gpu_pipeline(backend: str | None, device: str | None, model: Any = None) -> bool:
    """True when ``load`` should build a :class:`GpuPredictor`: the torch backend on a CUDA device.

    Example:
        >>> wants_gpu_pipeline("torch", "cuda:0"), wants_gpu_pipeline("onnxruntime", "cuda:0")
        (True, False)
    """
    from pathlib import Path

    if backend is None and model is not None:
        from ..backends.torch import TORCH_SUFFIXES

        backend = "torch" if Path(str(model)).suffix.lower() in TORCH_SUFFIXES else None
    dev = str(device or "").strip().lower()
    return backend == "torch" and (dev.startswith("cuda") or dev.isdigit())
