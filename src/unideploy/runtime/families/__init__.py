"""Model-family adapters, looked up by name or recognised from the spec and output layout.

Adding a family is one module with an :class:`~unideploy.runtime.families.base.Adapter` subclass plus one
:data:`FAMILIES` line (or :func:`register_adapter` from outside the package).

Example:
    >>> list_families()
    ['classify', 'nanodet', 'rtdetr', 'yolo', 'yolo_obb', 'yolo_pose', 'yolo_seg', 'yolov5', 'yolov5_seg', 'yolox']
    >>> get_adapter("yolox").postprocess_defaults["iou"]
    0.45
"""

from __future__ import annotations

from collections.abc import Sequence

from unideploy.core.errors import ModelError
from unideploy.core.registry import Registry
from unideploy.core.spec import ModelSpec
from unideploy.runtime.backends.base import TensorInfo
from unideploy.runtime.families.base import Adapter

__all__ = ["FAMILIES", "Adapter", "get_adapter", "list_families", "register_adapter", "resolve_adapter"]

#: model family name -> adapter class ("module:Class", imported on first use)
FAMILIES: Registry[type[Adapter]] = Registry("model family", error=ModelError, choices="supported families")
FAMILIES.register("yolo", "unideploy.runtime.families.yolo:YoloAdapter")
FAMILIES.register("yolo_seg", "unideploy.runtime.families.yolo_seg:YoloSegAdapter")
FAMILIES.register("yolo_pose", "unideploy.runtime.families.yolo_pose:YoloPoseAdapter")
FAMILIES.register("yolo_obb", "unideploy.runtime.families.yolo_obb:YoloObbAdapter")
FAMILIES.register("yolov5", "unideploy.runtime.families.yolov5:Yolov5Adapter")
FAMILIES.register("yolov5_seg", "unideploy.runtime.families.yolo_seg:Yolov5SegAdapter")
FAMILIES.register("yolox", "unideploy.runtime.families.yolox:YoloxAdapter")
FAMILIES.register("rtdetr", "unideploy.runtime.families.rtdetr:RtdetrAdapter")
FAMILIES.register("nanodet", "unideploy.runtime.families.nanodet:NanodetAdapter")
FAMILIES.register("classify", "unideploy.runtime.families.classify:ClassifyAdapter")


def register_adapter(name: str, target: str | type[Adapter]) -> None:
    """Register an adapter class, given as ``"package.module:ClassName"`` or the class itself."""
    FAMILIES.register(name, target)


def get_adapter(name: str) -> type[Adapter]:
    """The adapter class of family ``name``.

    Raises:
        ModelError: no such family; the message lists the supported ones.
    """
    return FAMILIES.get(name)


def list_families() -> list[str]:
    """The registered family names, sorted."""
    return FAMILIES.names()


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
