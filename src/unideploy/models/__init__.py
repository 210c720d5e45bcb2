"""Model-family adapters, looked up by name or recognised from the spec and output layout."""

from __future__ import annotations

import importlib
from typing import Sequence

from ..backends.base import TensorInfo
from ..errors import ModelError
from ..spec import ModelSpec
from .base import Adapter

_REGISTRY: dict[str, str] = {
    "yolo": "unideploy.models.yolo:YoloAdapter",
    "yolov5": "unideploy.models.yolov5:Yolov5Adapter",
    "yolox": "unideploy.models.yolox:YoloxAdapter",
    "rtdetr": "unideploy.models.rtdetr:RtdetrAdapter",
    "nanodet": "unideploy.models.nanodet:NanodetAdapter",
    "classify": "unideploy.models.classify:ClassifyAdapter",
}


def register_adapter(name: str, target: str) -> None:
    """Register an adapter class given as "package.module:ClassName"."""
    _REGISTRY[name] = target


def get_adapter(name: str) -> type[Adapter]:
    if name not in _REGISTRY:
        raise ModelError(f"unknown model family {name!r}; supported families: {', '.join(sorted(_REGISTRY))}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def list_families() -> list[str]:
    return sorted(_REGISTRY)


def resolve_adapter(spec: ModelSpec, outputs: Sequence[TensorInfo], family: str | None = None) -> type[Adapter]:
    """The adapter for a model: ``family`` if given, else the spec's, else the one whose layout matches.

    Raises:
        ModelError: no family (or more than one) recognises the outputs; the message lists the supported layouts.
    """
    name = family or spec.family
    if name:
        return get_adapter(name)
    found = [n for n in list_families() if get_adapter(n).matches(spec, outputs)]
    if len(found) == 1:
        return get_adapter(found[0])
    shapes = ", ".join(f"{o.name}{o.describe()}" for o in outputs)
    what = "several families match" if found else "no family recognises it"
    layouts = "; ".join(f"{n}: {get_adapter(n).layout}" for n in list_families() if get_adapter(n).layout)
    raise ModelError(
        f"cannot tell the model family from outputs {shapes} ({what}: {found or 'none'}); "
        f"supported layouts: {layouts}; pass --family, one of: {', '.join(list_families())}"
    )
