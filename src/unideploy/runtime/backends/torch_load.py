"""Loading PyTorch models safely: ``torch.load(weights_only=True)`` with an allowlist of module classes.

A pickled checkpoint is read with an allowlist made only of ``torch.nn`` and Ultralytics module classes (their
own ``__setstate__`` is the only code that runs), so a checkpoint that references anything else (``os.system``,
``builtins.exec``, a class from an unknown package) is refused with a :class:`ModelError` naming what it
references. Full unpickling needs ``trust_pickle=True`` and warns (:class:`UnsafeCheckpointWarning`).

Example:
    >>> loaded = load_torch_model("yolov8n.pt")  # doctest: +SKIP
    >>> loaded.kind  # doctest: +SKIP
    'ultralytics'
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import ModelError
from unideploy.core.spec import parse_literal, parse_size
from unideploy.runtime.backends.torch_pickle import file_format, read_torch_metadata, zip_extra

__all__ = ["UnsafeCheckpointWarning", "LoadedModel", "load_checkpoint", "load_torch_model", "first_line"]


class UnsafeCheckpointWarning(UserWarning):
    """A checkpoint is being fully unpickled (``trust_pickle=True``): it can run any code it contains."""



# ------------------------------------------------------------------------------------ safe loading

@lru_cache(maxsize=1)
def _module_allowlist() -> tuple[type, ...]:
    """Every ``torch.nn.Module`` subclass defined in ``torch.nn.modules`` and in Ultralytics' model packages."""
    import inspect
    import pkgutil

    import torch

    packages = ["torch.nn.modules"]
    if importlib.util.find_spec("ultralytics") is not None:
        packages += ["ultralytics.nn.modules", "ultralytics.nn.tasks"]
    found: set[type] = set()
    for pkg_name in packages:
        try:
            pkg = importlib.import_module(pkg_name)
        except Exception:
            continue
        mods = [pkg]
        for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), pkg_name + "."):
            try:
                mods.append(importlib.import_module(info.name))
            except Exception:
                continue
        for m in mods:
            for obj in vars(m).values():
                if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and obj.__module__ == m.__name__:
                    found.add(obj)
    extra: list[Any] = []
    try:
        from ultralytics.utils import IterableSimpleNamespace

        extra.append(IterableSimpleNamespace)
    except Exception:
        pass
    try:  # metrics saved as numpy scalars in training checkpoints
        extra += [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
        from numpy.core.multiarray import scalar  # type: ignore[attr-defined]

        extra.append(scalar)
    except Exception:
        pass
    return tuple(sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")) + tuple(extra)


def load_checkpoint(path: str | Path, *, trust_pickle: bool = False, map_location: Any = "cpu") -> Any:
    """Load a ``torch.save`` file: weights-only with the module allowlist, or fully with ``trust_pickle``.

    Raises:
        ModelError: the checkpoint references globals outside the allowlist (named in the message) and
            ``trust_pickle`` is False, or it cannot be read at all.

    Example:
        >>> ckpt = load_checkpoint("yolov8n.pt")  # doctest: +SKIP
    """
    import torch

    p = Path(path)
    if trust_pickle:
        warnings.warn(
            f"{p.name}: loading with full unpickling (trust_pickle=True) runs any code the file contains; "
            "do this only for files from a source you trust",
            UnsafeCheckpointWarning,
            stacklevel=3,
        )
        try:
            return torch.load(p, map_location=map_location, weights_only=False)
        except Exception as e:
            raise ModelError(f"{p}: torch.load failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    allow = _module_allowlist()
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused: list[str] = []
        try:
            with torch.serialization.safe_globals(list(allow)):
                refused = list(torch.serialization.get_unsafe_globals_in_checkpoint(p))
        except Exception:
            pass
        allowed = {f"{c.__module__}.{c.__qualname__}" for c in allow if isinstance(c, type)}
        refused = [g for g in refused if g not in allowed] or [first_line(e)]
        hint = ""
        if any(g.startswith("ultralytics.") for g in refused) and importlib.util.find_spec("ultralytics") is None:
            hint = " (the checkpoint is an Ultralytics model: install it with pip install 'unideploy[ultralytics]')"
        raise ModelError(
            f"{p}: the safe loader (weights_only) refuses this checkpoint: it references {', '.join(sorted(refused)[:8])}"
            f"{' …' if len(refused) > 8 else ''}{hint}; if you trust the file, pass trust_pickle=True "
            "(full unpickling can run code hidden in the file)"
        ) from None
    except Exception as e:
        raise ModelError(f"{p}: torch.load failed: {type(e).__name__}: {first_line(e)}") from None


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


# --------------------------------------------------------------------------------- model loading

@dataclass
class LoadedModel:
    """A runnable module and what was learned about it while loading."""

    module: Any
    kind: str  # "ultralytics", "module", "torchscript", "export"
    input_shape: tuple[int | None, ...] | None = None  # known fixed input shape (export / traced files)
    meta: dict[str, str] = field(default_factory=dict)


def _module_from_checkpoint(obj: Any, path: Path) -> tuple[Any, str]:
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj, "module"
    if isinstance(obj, dict):
        for key in ("ema", "model"):  # Ultralytics / YOLOv5 checkpoints
            m = obj.get(key)
            if isinstance(m, torch.nn.Module):
                return m, "ultralytics" if type(m).__module__.startswith(("ultralytics", "models")) else "module"
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelError(f"{path}: this is a bare state_dict (weights without an architecture); save the model "
                             "itself (Ultralytics checkpoint, TorchScript or torch.export) to run it")
        raise ModelError(f"{path}: expected a checkpoint holding a model under 'model' or 'ema', found keys {sorted(map(str, obj))[:10]}")
    raise ModelError(f"{path}: expected a torch.nn.Module or an Ultralytics checkpoint, got {type(obj).__name__}")


def load_torch_model(path: str | Path, *, trust_pickle: bool = False, fuse: bool = True) -> LoadedModel:
    """Load any supported PyTorch file on the CPU in float32, in eval mode.

    Raises:
        ModelError: unreadable file, unsafe checkpoint without ``trust_pickle``, or no model inside.
    """
    import torch

    p = Path(path)
    fmt = file_format(p)
    if fmt == "torchscript":
        extra = {"config.txt": ""}
        try:
            m = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
        except Exception as e:
            raise ModelError(f"{p}: torch.jit.load failed: {first_line(e)}") from None
        meta = zip_extra(p)
        shape = None
        if meta.get("imgsz"):
            try:
                h, w = parse_size(parse_literal(meta["imgsz"]), "imgsz")
                b = int(parse_literal(meta.get("batch", "1")))
                shape = (b, 3, h, w)
            except Exception:
                shape = None
        return LoadedModel(m.float().eval(), "torchscript", shape, meta)
    if fmt == "export":
        try:
            ep = torch.export.load(str(p))
        except Exception as e:
            raise ModelError(f"{p}: torch.export.load failed: {first_line(e)}") from None
        shape = None
        for node in ep.graph.nodes:
            if node.op == "placeholder" and node.name in set(ep.graph_signature.user_inputs):
                val = node.meta.get("val")
                if val is not None:
                    shape = tuple(int(d) if isinstance(d, int) else None for d in val.shape)
                break
        return LoadedModel(ep.module(), "export", shape, zip_extra(p))
    obj = load_checkpoint(p, trust_pickle=trust_pickle)
    module, kind = _module_from_checkpoint(obj, p)
    module = module.float().eval()
    if kind == "ultralytics" and fuse and hasattr(module, "fuse"):
        try:
            module = module.fuse(verbose=False) if "verbose" in module.fuse.__code__.co_varnames else module.fuse()
        except Exception:
            pass  # unfused models still run
    meta = read_torch_metadata(p) if zipfile.is_zipfile(p) else {}
    return LoadedModel(module, kind, None, meta)
