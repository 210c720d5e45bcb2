"""Backend registry: name -> "module:Class", imported only when asked for."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from .base import Backend

_REGISTRY: dict[str, str] = {
    "onnxruntime": "unideploy.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "unideploy.backends.openvino:OpenVINOBackend",
    "torch": "unideploy.backends.torch:TorchBackend",
    "ascend": "unideploy.backends.ascend:AscendBackend",
    "acl": "unideploy.backends.acl:AclBackend",
    "rknn": "unideploy.backends.rknn:RknnBackend",
    "tensorrt": "unideploy.backends.tensorrt:TensorRTBackend",
}

ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "ov": "openvino"}


def register_backend(name: str, target: str) -> None:
    """Register a backend class given as "package.module:ClassName"."""
    _REGISTRY[name] = target


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (or an alias).

    Raises:
        InputError: no backend has that name (the message lists the valid names).
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise InputError(f"unknown backend {name!r}; valid backends: {', '.join(sorted(_REGISTRY))}")
    module, cls = _REGISTRY[key].split(":")
    return getattr(importlib.import_module(module), cls)


def list_backends(available_only: bool = False) -> list[str]:
    """Registered backend names; with ``available_only``, those whose runtime is installed.

    Example:
        >>> "onnxruntime" in list_backends()
        True
    """
    names = sorted(_REGISTRY)
    if available_only:
        names = [n for n in names if get_backend(n).available()]
    return names


def backend_for_path(path: str | Path) -> str:
    """Default backend for a model file: the first registered backend that opens its suffix
    (ONNX goes to onnxruntime, the embedded default)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    for name in list_backends():
        if suffix in get_backend(name).suffixes:
            return name
    return "onnxruntime"
