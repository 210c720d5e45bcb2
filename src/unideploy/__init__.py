"""unideploy: deploy trained vision models on any inference runtime through one API.

Example:
    >>> import unideploy
    >>> with unideploy.load("model.onnx", backend="onnxruntime") as predictor:  # doctest: +SKIP
    ...     detections = predictor("image.jpg")

Public names are imported lazily, so ``import unideploy`` costs almost nothing and never imports a runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "pipeline",
    "compare": "compare",
    "Predictor": "pipeline",
    "Detections": "results",
    "Classifications": "results",
    "ModelSpec": "spec",
    "read_spec": "spec",
    "export": "convert",
    "quantize": "quantize",
    "list_backends": "backends.registry",
    "get_backend": "backends.registry",
    "read_image": "sources",
    "UnideployError": "errors",
    "InputError": "errors",
    "ModelError": "errors",
    "BackendError": "errors",
    "BackendUnavailableError": "errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unideploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
