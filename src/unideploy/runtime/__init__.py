"""unideploy.runtime: backends, model families and the predictor (see docs/architecture.md).

Names here are imported on first use, so ``import unideploy.runtime`` loads no runtime and no predictor.
``unideploy.load`` lives in :mod:`unideploy.runtime.load` (it picks the CPU or the GPU predictor).

Example:
    >>> from unideploy.runtime import Predictor  # doctest: +SKIP
    >>> with Predictor("model.onnx") as p:  # doctest: +SKIP
    ...     dets = p("bus.jpg")
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Predictor": "unideploy.runtime.predictor",
    "Outcome": "unideploy.runtime.stream",
    "StageTimes": "unideploy.runtime.stream",
    "open_model": "unideploy.runtime.open",
    "OpenModel": "unideploy.runtime.open",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unideploy.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
