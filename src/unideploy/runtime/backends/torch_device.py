"""Torch devices: ``cpu``, ``cuda[:N]`` and the vendor plug-in devices ``npu[:N]`` (``torch_npu``, Huawei Ascend)
and ``mlu[:N]`` (``torch_mlu``, Cambricon). A plug-in is imported only when its device is asked for.

Example:
    >>> parse_device("cuda:1")
    ('cuda', 1)
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from unideploy.core.errors import BackendUnavailableError, DeviceError

__all__ = ["PLUGINS", "parse_device", "device_module", "resolve_device", "available_devices"]

#: device kind -> (plug-in module, what it is, where it comes from)
PLUGINS = {
    "npu": ("torch_npu", "Huawei Ascend NPU plug-in", "the torch_npu wheel matching your torch version (Ascend's PyTorch adapter)"),
    "mlu": ("torch_mlu", "Cambricon MLU plug-in", "Cambricon's torch_mlu build for your torch version (Cambricon PyTorch / CNToolkit)"),
}


def parse_device(device: str | None) -> tuple[str, int | None]:
    """Split a device string into (kind, index): ``"cuda:1"`` -> ("cuda", 1); ``None`` -> ("cpu", None).

    Raises:
        DeviceError: not of the form ``cpu``, ``cuda[:N]``, ``npu[:N]`` or ``mlu[:N]``.

    Example:
        >>> parse_device("npu:0")
        ('npu', 0)
    """
    if device is None or str(device).strip() == "":
        return "cpu", None
    text = str(device).strip().lower()
    if text.isdigit():  # "0" -> cuda:0, as Ultralytics does
        return "cuda", int(text)
    kind, sep, idx = text.partition(":")
    if kind not in ("cpu", "cuda", "npu", "mlu") or (sep and not idx.isdigit()) or (kind == "cpu" and idx not in ("", "0")):
        raise DeviceError(f"torch device must be cpu, cuda[:N], npu[:N] or mlu[:N]; got {device!r}")
    return kind, (int(idx) if idx else None) if kind != "cpu" else None



def device_module(torch: Any, kind: str) -> Any:
    """``torch.cuda`` / ``torch.npu`` / ``torch.mlu`` (the latter two exist once their plug-in is imported)."""
    return getattr(torch, kind)


def resolve_device(device: str | None) -> Any:
    """A ``torch.device`` for ``device``, importing the vendor plug-in when one is asked for.

    Raises:
        BackendUnavailableError: ``npu``/``mlu`` asked for and its plug-in is not installed.
        DeviceError: the device kind has no devices here, or the index is out of range.
    """
    import torch

    kind, index = parse_device(device)
    if kind == "cpu":
        return torch.device("cpu")
    if kind in PLUGINS:
        module, what, where = PLUGINS[kind]
        if importlib.util.find_spec(module) is None:
            raise BackendUnavailableError(
                f"device {device!r} needs the {what} '{module}', which is not installed; install {where}"
            )
        try:
            importlib.import_module(module)
        except Exception as e:  # a plug-in built for another torch fails here
            raise BackendUnavailableError(f"device {device!r}: importing '{module}' failed: {e}") from None
    mod = getattr(torch, kind, None)
    count = int(mod.device_count()) if mod is not None and mod.is_available() else 0
    if count == 0:
        raise DeviceError(f"torch device {device!r} asked for, but torch sees no {kind} device here; available: {', '.join(available_devices())}")
    index = 0 if index is None else index
    if index >= count:
        raise DeviceError(f"torch device {device!r} does not exist; this machine has {count} {kind} device(s): "
                          f"{', '.join(f'{kind}:{i}' for i in range(count))}")
    return torch.device(f"{kind}:{index}")


def available_devices() -> list[str]:
    """Torch devices usable here: ``cpu``, then any CUDA devices (plug-in devices only if already imported)."""
    import sys

    import torch

    out = ["cpu"]
    kinds = ["cuda"] + [k for k, (mod, _, _) in PLUGINS.items() if mod in sys.modules]
    for kind in kinds:
        mod = getattr(torch, kind, None)
        try:
            n = int(mod.device_count()) if mod is not None and mod.is_available() else 0
        except Exception:
            n = 0
        out += [f"{kind}:{i}" for i in range(n)]
    return out
