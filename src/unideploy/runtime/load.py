"""``unideploy.load``: the CPU :class:`~unideploy.runtime.predictor.Predictor`, or the GPU end-to-end one.

Kept apart from both predictor modules so that neither imports the other's module back: this one sits above
them and picks one.
"""

from __future__ import annotations

import os
from typing import Any

from unideploy.runtime.gpu import wants_gpu_predictor
from unideploy.runtime.predictor import Predictor

__all__ = ["load"]


def load(model: str | os.PathLike, backend: str | None = None, device: str | None = None, **kwargs: Any) -> Predictor:
    """Open a model for prediction. See :class:`~unideploy.runtime.predictor.Predictor` for the arguments.

    Example:
        >>> import unideploy
        >>> predictor = unideploy.load("model.onnx", backend="openvino", device="CPU")  # doctest: +SKIP
        >>> dets = predictor(["a.jpg", "b.jpg"])  # doctest: +SKIP

    With ``backend="torch"`` and a CUDA device, the GPU end-to-end predictor (nvJPEG decode, GPU letterbox
    and NMS, overlapped stages; see :mod:`unideploy.runtime.gpu`) is returned instead, with the same interface.
    """
    if wants_gpu_predictor(backend, device, model):
        from unideploy.runtime.gpu.predictor import GpuPredictor

        return GpuPredictor(model, device=device, **kwargs)
    return Predictor(model, backend, device, **kwargs)
