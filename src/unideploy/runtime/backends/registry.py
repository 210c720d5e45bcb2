"""Backend registry: name -> "module:Class", imported only when asked for (see :mod:`unideploy.core.registry`).

Canonical names are the backend names; aliases cover the short spellings and the export-target names
(``engine`` -> tensorrt, ``om`` -> ascend), so every command accepts the same words.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from unideploy.core.errors import InputError
from unideploy.core.registry import Registry

if TYPE_CHECKING:
    from unideploy.runtime.backends.base import Backend

__all__ = ["BACKENDS", "register_backend", "get_backend", "canonical_backend", "list_backends", "backend_for_path"]

BACKENDS: Registry[type[Backend]] = Registry("backend", error=InputError)
BACKENDS.register("onnxruntime", "unideploy.runtime.backends.onnxruntime:OnnxRuntimeBackend", aliases=("ort", "onnx"))
BACKENDS.register("openvino", "unideploy.runtime.backends.openvino:OpenVINOBackend", aliases=("ov",))
BACKENDS.register("torch", "unideploy.runtime.backends.torch:TorchBackend", aliases=("pytorch",))
BACKENDS.register("ascend", "unideploy.runtime.backends.ascend:AscendBackend", aliases=("om", "ascend-om", "ais_bench"))
BACKENDS.register("acl", "unideploy.runtime.backends.acl:AclBackend", aliases=("pyacl",))
BACKENDS.register("rknn", "unideploy.runtime.backends.rknn:RknnBackend")
BACKENDS.register("tensorrt", "unideploy.runtime.backends.tensorrt:TensorRTBackend", aliases=("engine", "trt"))


def register_backend(name: str, target: str | type[Backend], aliases: tuple[str, ...] = ()) -> None:
    """Register a backend class (or ``"package.module:ClassName"``) under ``name``."""
    BACKENDS.register(name, target, aliases=aliases)


def canonical_backend(name: str) -> str:
    """The canonical backend name for ``name`` or an alias (``ov`` -> ``openvino``).

    Raises:
        InputError: no backend has that name (the message lists the valid names).
    """
    return BACKENDS.canonical(name)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (or an alias).

    Raises:
        InputError: no backend has that name (the message lists the valid names).
    """
    return BACKENDS.get(name)


def list_backends(available_only: bool = False) -> list[str]:
    """Registered backend names; with ``available_only``, those whose runtime is installed.

    Example:
        >>> "onnxruntime" in list_backends()
        True
    """
    return BACKENDS.names(lambda cls: cls.available()) if available_only else BACKENDS.names()


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
