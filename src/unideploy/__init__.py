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
    "load": "runtime.load",
    "predict": "tools.predict",
    "compare": "tools.compare",
    "Predictor": "runtime.predictor",
    "Detections": "core.results",
    "Classifications": "core.results",
    "ModelSpec": "core.spec",
    "read_spec": "runtime.open",
    "export": "tools.convert",
    "quantize": "tools.quantize",
    "list_backends": "runtime.backends.registry",
    "get_backend": "runtime.backends.registry",
    "read_image": "core.sources",
    "UnideployError": "core.errors",
    "InputError": "core.errors",
    "ModelError": "core.errors",
    "BackendError": "core.errors",
    "BackendUnavailableError": "core.errors",
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
