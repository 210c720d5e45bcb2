"""Inference runtimes behind one contract (see ``base.py``)."""

from unideploy.runtime.backends.base import Backend, Session, TensorInfo, Timings
from unideploy.runtime.backends.registry import backend_for_path, get_backend, list_backends, register_backend

__all__ = ["Backend", "Session", "TensorInfo", "Timings", "backend_for_path", "get_backend", "list_backends", "register_backend"]
