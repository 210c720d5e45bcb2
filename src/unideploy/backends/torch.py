"""PyTorch backend: Ultralytics ``.pt`` checkpoints, TorchScript files and ``torch.export`` programs.

Devices: ``cpu``, ``cuda`` / ``cuda:N``, and the vendor plug-in devices ``npu:N`` (``torch_npu``, Huawei
Ascend) and ``mlu:N`` (``torch_mlu``, Cambricon). A plug-in is imported only when its device is asked for.

Loading is safe by default: a pickled checkpoint is read with ``torch.load(weights_only=True)`` and an
allowlist made only of ``torch.nn`` and Ultralytics module classes (their own ``__setstate__`` is the only
code that runs), so a checkpoint that references anything else (``os.system``, ``builtins.exec``, a class
from an unknown package) is refused with a :class:`ModelError` naming what it references. Full unpickling
needs ``trust_pickle=True`` and warns. The spec (names, imgsz, stride) is read from the checkpoint without
unpickling anything: :func:`read_torch_metadata` walks the pickle with inert stand-ins for every class.

On CUDA a session keeps pinned host buffers, captures one CUDA graph per input shape (replayed on later
calls of the same shape), and can wrap the model in ``torch.compile``.

Example:
    >>> import unideploy
    >>> p = unideploy.load("yolov8n.pt", backend="torch", device="cpu", precision="fp32")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import pickle
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import BackendError, BackendUnavailableError, DeviceError, InputError, ModelError
from .base import Backend, Session, TensorInfo

#: model file suffixes this backend opens
TORCH_SUFFIXES = (".pt", ".pth", ".torchscript", ".pt2", ".ts")

#: device kind -> (plug-in module, what it is, where it comes from)
PLUGINS = {
    "npu": ("torch_npu", "Huawei Ascend NPU plug-in", "the torch_npu wheel matching your torch version (Ascend's PyTorch adapter)"),
    "mlu": ("torch_mlu", "Cambricon MLU plug-in", "Cambricon's torch_mlu build for your torch version (Cambricon PyTorch / CNToolkit)"),
}

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "float32": "float32", "float16": "float16",
              "half": "float16", "bfloat16": "bfloat16"}


class UnsafeCheckpointWarning(UserWarning):
    """A checkpoint is being fully unpickled (``trust_pickle=True``): it can run any code it contains."""


# ------------------------------------------------------------------------------------------- devices

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


def _device_module(torch: Any, kind: str) -> Any:
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


# ----------------------------------------------------------------------------------- file formats

def file_format(path: str | Path) -> str:
    """"torchscript", "export" (a ``torch.export`` archive) or "pickle" (``torch.save`` checkpoint).

    Raises:
        ModelError: the file is missing or not a PyTorch file.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        tails = {n.split("/", 1)[-1] for n in names}
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "archive_format" in tails or "models/model.json" in tails or any(t.startswith("models/") for t in tails):
            return "export"
        if "data.pkl" in tails:
            return "pickle"
        raise ModelError(f"{p}: expected a PyTorch file (torch.save checkpoint, TorchScript or torch.export archive); "
                         f"it is a zip file with none of their markers")
    with open(p, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":  # legacy (pre-1.6) torch.save: a raw pickle stream
        return "pickle"
    raise ModelError(f"{p}: expected a PyTorch file (.pt checkpoint, TorchScript or torch.export .pt2), "
                     "got something that is neither a zip archive nor a pickle")


# ----------------------------------------------------------------------------- inert pickle walker

class _Inert:
    """Stand-in for any class or function a pickle references: records what it was given, runs nothing."""

    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (OrderedDict) get SETITEMS
        if not isinstance(self._state, dict):
            self._state = {}
        self._state[key] = value

    def __repr__(self) -> str:
        return f"<inert {self._qualname}>"


class _InertDict(dict):
    """OrderedDict stand-in: a dict that accepts the ``BUILD`` state (``_metadata``) torch state dicts carry."""

    def __setstate__(self, state: Any) -> None:
        self._state = state


@dataclass
class _Storage:
    kind: str
    key: str


class _InertUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` never imports anything: every global becomes an :class:`_Inert` subclass."""

    def __init__(self, data: bytes, storages: dict[str, bytes] | None = None):
        super().__init__(io.BytesIO(data))
        self.referenced: set[str] = set()
        self._storages = storages or {}

    def find_class(self, module: str, name: str) -> Any:
        qual = f"{module}.{name}"
        self.referenced.add(qual)
        if qual in ("collections.OrderedDict", "builtins.dict", "__builtin__.dict"):
            return _InertDict
        if qual in ("builtins.set", "__builtin__.set"):
            return set
        return type(name, (_Inert,), {"_qualname": qual})

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
            kind = getattr(pid[1], "_qualname", str(pid[1]))
            return _Storage(kind.rsplit(".", 1)[-1], str(pid[2]))
        return None


_STORAGE_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
                   "LongStorage": np.int64, "IntStorage": np.int32}


def _small_tensor(obj: Any, storages: dict[str, bytes]) -> np.ndarray | None:
    """Values of a (small) tensor found by the inert walker: ``_rebuild_tensor_v2(storage, offset, size, ...)``."""
    args = getattr(obj, "_args", None)
    if getattr(obj, "_qualname", "").endswith("_rebuild_parameter") and args:
        return _small_tensor(args[0], storages)
    if not args or not isinstance(args[0], _Storage):
        return None
    st, offset, size = args[0], int(args[1]), tuple(args[2])
    raw = storages.get(st.key)
    dtype = _STORAGE_DTYPES.get(st.kind)
    if raw is None or dtype is None:
        return None
    n = int(np.prod(size)) if size else 1
    return np.frombuffer(raw, dtype=dtype)[offset : offset + n].reshape(size)


def _walk_checkpoint(path: Path) -> tuple[Any, set[str], dict[str, bytes]]:
    """Unpickle a torch.save zip archive with inert stand-ins; returns (object, referenced globals, small storages)."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        data = z.read(pkl)
        storages = {}
        for n in names:  # only small storages (strides, anchors): never the weights
            if n.startswith(prefix + "data/") and z.getinfo(n).file_size <= 4096:
                storages[n[len(prefix + "data/") :]] = z.read(n)
    up = _InertUnpickler(data, storages)
    try:
        obj = up.load()
    except Exception as e:
        raise ModelError(f"{path}: expected a torch.save checkpoint, its pickle could not be read ({type(e).__name__}: {e})") from None
    return obj, up.referenced, storages


def _state(obj: Any) -> dict[str, Any]:
    st = getattr(obj, "_state", None)
    return st if isinstance(st, dict) else {}


def _ultralytics_meta(ckpt: Any, storages: dict[str, bytes]) -> dict[str, str]:
    """Ultralytics-style metadata (the keys its ONNX export writes) from an inert checkpoint."""
    if not isinstance(ckpt, dict):
        return {}
    model = ckpt.get("ema") if isinstance(ckpt.get("ema"), _Inert) else ckpt.get("model")
    if model is None:
        model = ckpt.get("model")
    st = _state(model)
    if not st:
        return {}
    meta: dict[str, str] = {}
    qual = getattr(model, "_qualname", "")
    if qual.startswith("ultralytics.") or qual.startswith("models."):
        meta["author"] = "Ultralytics"
    task = {"DetectionModel": "detect", "ClassificationModel": "classify", "SegmentationModel": "segment",
            "PoseModel": "pose", "OBBModel": "obb", "RTDETRDetectionModel": "detect", "WorldModel": "detect",
            "YOLOEModel": "detect"}.get(qual.rsplit(".", 1)[-1])
    if task:
        meta["task"] = task
    names = st.get("names")
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if isinstance(names, dict):
        meta["names"] = repr({int(k): str(v) for k, v in names.items()})
    stride = _small_tensor(st.get("stride"), storages) if isinstance(st.get("stride"), _Inert) else st.get("stride")
    if stride is not None:
        try:
            meta["stride"] = str(int(max(np.asarray(stride, np.float64).reshape(-1))))
        except (TypeError, ValueError):
            pass
    imgsz = None
    for source in (ckpt.get("train_args"), st.get("args")):
        if isinstance(source, _Inert):  # IterableSimpleNamespace
            source = _state(source)
        if isinstance(source, dict) and source.get("imgsz") is not None:
            imgsz = source["imgsz"]
            break
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    if isinstance(imgsz, (list, tuple)) and len(imgsz) in (1, 2):
        meta["imgsz"] = repr([int(imgsz[0]), int(imgsz[-1])])
    head = None
    modules = st.get("_modules")
    seq = modules.get("model") if isinstance(modules, dict) else None
    layers = _state(seq).get("_modules") if seq is not None else None
    if isinstance(layers, dict) and layers:
        head = list(layers.values())[-1]
    if head is not None:
        hq = getattr(head, "_qualname", "")
        meta["head"] = hq.rsplit(".", 1)[-1]
        hs = _state(head)
        if hs.get("_end2end") or (hs.get("end2end") is True):
            meta["end2end"] = "True"
    meta["batch"] = "1"
    return meta


def _zip_extra(path: Path) -> dict[str, str]:
    """Metadata stored as extra files in a TorchScript / torch.export archive (Ultralytics' ``config.txt``)."""
    meta: dict[str, str] = {}
    with zipfile.ZipFile(path) as z:
        for n in z.namelist():
            tail = n.split("/", 1)[-1]
            if tail == "extra/config.txt":
                try:
                    d = json.loads(z.read(n).decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(d, dict):
                    meta.update({str(k): v if isinstance(v, str) else repr(v) for k, v in d.items()})
            elif tail == "extra/unideploy.json":
                meta["unideploy"] = z.read(n).decode("utf-8")
    return meta


def read_torch_metadata(path: str | Path) -> dict[str, str]:
    """Flat string metadata of a PyTorch model file, in the form of Ultralytics' ONNX ``metadata_props``.

    Nothing in the file is executed: checkpoints are walked with inert stand-ins for every class.

    Raises:
        ModelError: not a PyTorch file.

    Example:
        >>> meta = read_torch_metadata("yolov8n.pt")  # doctest: +SKIP
        >>> meta["names"][:20]  # doctest: +SKIP
        "{0: 'person', 1: 'b"
    """
    p = Path(path)
    fmt = file_format(p)
    if fmt in ("torchscript", "export"):
        return _zip_extra(p)
    if not zipfile.is_zipfile(p):
        return {}  # legacy format: nothing to read without unpickling
    try:
        obj, _, storages = _walk_checkpoint(p)
    except ModelError:
        return {}  # loading the model reports what is wrong with the file
    meta = _ultralytics_meta(obj, storages)
    if isinstance(obj, dict) and isinstance(obj.get("unideploy"), str):
        meta["unideploy"] = obj["unideploy"]
    return meta


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
        refused = [g for g in refused if g not in allowed] or [_first_line(e)]
        hint = ""
        if any(g.startswith("ultralytics.") for g in refused) and importlib.util.find_spec("ultralytics") is None:
            hint = " (the checkpoint is an Ultralytics model: install it with pip install 'unideploy[ultralytics]')"
        raise ModelError(
            f"{p}: the safe loader (weights_only) refuses this checkpoint: it references {', '.join(sorted(refused)[:8])}"
            f"{' …' if len(refused) > 8 else ''}{hint}; if you trust the file, pass trust_pickle=True "
            "(full unpickling can run code hidden in the file)"
        ) from None
    except Exception as e:
        raise ModelError(f"{p}: torch.load failed: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
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
            raise ModelError(f"{p}: torch.jit.load failed: {_first_line(e)}") from None
        meta = _zip_extra(p)
        shape = None
        if meta.get("imgsz"):
            try:
                from ..spec import _literal, _pair

                h, w = _pair(_literal(meta["imgsz"]), "imgsz")
                b = int(_literal(meta.get("batch", "1")))
                shape = (b, 3, h, w)
            except Exception:
                shape = None
        return LoadedModel(m.float().eval(), "torchscript", shape, meta)
    if fmt == "export":
        try:
            ep = torch.export.load(str(p))
        except Exception as e:
            raise ModelError(f"{p}: torch.export.load failed: {_first_line(e)}") from None
        shape = None
        for node in ep.graph.nodes:
            if node.op == "placeholder" and node.name in set(ep.graph_signature.user_inputs):
                val = node.meta.get("val")
                if val is not None:
                    shape = tuple(int(d) if isinstance(d, int) else None for d in val.shape)
                break
        return LoadedModel(ep.module(), "export", shape, _zip_extra(p))
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


# ------------------------------------------------------------------------------------------ session

def _first_tensor(out: Any) -> list[Any]:
    """Model outputs as a flat list of tensors (Ultralytics eval heads return ``(y, raw)``: keep ``y``)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (list, tuple)) and out:
        first = out[0]
        if isinstance(first, torch.Tensor) and all(not isinstance(o, torch.Tensor) for o in out[1:]):
            return [first]  # (y, preds-dict)
        flat = [o for o in out if isinstance(o, torch.Tensor)]
        if flat:
            return flat
        return _first_tensor(first)
    raise BackendError(f"the model returned {type(out).__name__}, expected tensor(s)")


class TorchSession(Session):
    """An open PyTorch model on one device; see :class:`TorchBackend` for the options."""

    backend = "torch"

    def __init__(self, path: Path, device: str, loaded: LoadedModel, torch_device: Any, options: dict[str, Any]):
        import torch

        super().__init__(path, device)
        self.torch = torch
        self.tdev = torch_device
        self.kind = loaded.kind
        self._meta = dict(loaded.meta)
        precision = str(options.get("precision") or ("fp16" if options.get("half") else "fp32")).lower()
        if precision not in PRECISIONS:
            raise InputError(f"precision must be fp32, fp16 or bf16; got {precision!r}")
        self.precision = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[PRECISIONS[precision]]
        self.dtype = getattr(torch, PRECISIONS[precision])
        self.device_kind = torch_device.type
        module = loaded.module
        try:
            module = module.to(torch_device)
            if self.dtype != torch.float32:
                module = module.to(self.dtype)
        except Exception as e:
            raise BackendError(f"could not move {path.name} to {device} in {self.precision}: {_first_line(e)}") from None
        self.module = module
        self.cuda_graph = bool(options.get("cuda_graph", True)) and self.device_kind == "cuda"
        self.compiled = False
        if options.get("compile"):
            mode = options.get("compile_mode") or ("reduce-overhead" if self.cuda_graph else "default")
            self.module = torch.compile(self.module, mode=mode, dynamic=False)
            self.compiled = True
            self.cuda_graph = False  # reduce-overhead already captures CUDA graphs
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, list[Any]]] = {}
        self._pinned: dict[str, Any] = {}
        self._stream = torch.cuda.Stream(device=torch_device) if self.device_kind == "cuda" else None
        # declared inputs: fixed where the file fixes them, dynamic otherwise
        shape = loaded.input_shape or (None, 3, None, None)
        self.inputs = [TensorInfo("images", tuple(shape), np.dtype(np.float32))]
        probe = self._probe_shape(shape, options)
        outs = self.run_tensor(torch.zeros(probe, device=torch_device, dtype=torch.float32), clone=True)
        dynamic_hw = shape[2] is None or shape[3] is None
        self.outputs = []
        for i, o in enumerate(outs):
            dims: list[int | None] = list(o.shape)
            if dims:
                dims[0] = None if shape[0] is None else dims[0]
            if dynamic_hw:  # anchors / spatial dims follow the input size: keep only the channel axis
                dims = [d if (j == 1 and len(dims) == 3) else None for j, d in enumerate(dims)] if len(dims) == 3 else [None] * len(dims)
            self.outputs.append(TensorInfo(f"output{i}", tuple(dims), np.dtype(np.float32)))
        self._graphs.clear()  # the probe shape is rarely the working shape

    def _probe_shape(self, shape: tuple[int | None, ...], options: dict[str, Any]) -> tuple[int, ...]:
        from ..spec import _literal, _pair

        imgsz = options.get("imgsz") or (_literal(self._meta["imgsz"]) if "imgsz" in self._meta else None) or 640
        h, w = _pair(imgsz, "imgsz")
        stride = int(_literal(self._meta.get("stride", "32"))) if str(self._meta.get("stride", "32")).isdigit() else 32
        h, w = -(-h // stride) * stride, -(-w // stride) * stride
        return (shape[0] or 1, shape[1] or 3, shape[2] or h, shape[3] or w)

    def metadata(self) -> dict[str, str]:
        return dict(self._meta)

    # -- device helpers ----------------------------------------------------------------------------
    def synchronize(self) -> None:
        if self.device_kind != "cpu":
            _device_module(self.torch, self.device_kind).synchronize(self.tdev)

    def _forward(self, x: Any) -> list[Any]:
        return _first_tensor(self.module(x))

    def _graph_for(self, x: Any) -> tuple[Any, Any, list[Any]] | None:
        """Capture (once per shape) a CUDA graph of the forward pass on a static input buffer."""
        torch = self.torch
        key = tuple(x.shape)
        if key in self._graphs:
            return self._graphs[key]
        static_in = torch.empty_like(x)
        static_in.copy_(x)
        s = torch.cuda.Stream(device=self.tdev)
        s.wait_stream(torch.cuda.current_stream(self.tdev))
        try:
            with torch.cuda.stream(s):
                for _ in range(3):  # warm-up (cudnn autotune, lazy init) outside the capture
                    self._forward(static_in)
            torch.cuda.current_stream(self.tdev).wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
        except Exception as e:  # models with host sync / dynamic control flow cannot be captured
            warnings.warn(f"CUDA graph capture failed for {self.path.name} ({_first_line(e)}); running eagerly", stacklevel=2)
            self.cuda_graph = False
            return None
        self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def run_tensor(self, x: Any, *, clone: bool = True) -> list[Any]:
        """Forward pass on a tensor already on this session's device (any float dtype); no host copies.

        With CUDA graphs the outputs live in the graph's static buffers, overwritten by the next call of the
        same shape: ``clone=False`` returns them as they are (consume them before the next call).

        Example:
            >>> outs = session.run_tensor(torch.zeros(8, 3, 640, 640, device="cuda"))  # doctest: +SKIP
        """
        torch = self.torch
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        with torch.inference_mode():
            if self.cuda_graph:
                entry = self._graph_for(x)
                if entry is not None:
                    graph, static_in, static_out = entry
                    static_in.copy_(x)
                    graph.replay()
                    return [o.clone() for o in static_out] if clone else list(static_out)
            return self._forward(x)

    def _pinned_buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        buf = self._pinned.get(name)
        n = int(np.prod(shape))
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.torch.empty(max(n, 1), dtype=dtype, pin_memory=True)
            self._pinned[name] = buf
        return buf[:n].view(shape)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        arr = feeds[self.inputs[0].name]
        t = self.last_timings
        t.h2d = t.compute = t.d2h = None
        try:
            if self.device_kind == "cpu":
                t0 = time.perf_counter()
                outs = self.run_tensor(torch.from_numpy(arr), clone=False)
                res = [o.float().numpy() for o in outs]
                t.total = t.compute = time.perf_counter() - t0
                return [r if r.flags.owndata or r.base is None else r.copy() for r in res]
            if self.device_kind == "cuda":
                return self._run_cuda(arr)
            t0 = time.perf_counter()  # npu / mlu: synchronous copies, host timers around device syncs
            x = torch.from_numpy(arr).to(self.tdev)
            self.synchronize()
            t1 = time.perf_counter()
            outs = self.run_tensor(x, clone=False)
            self.synchronize()
            t2 = time.perf_counter()
            res = [o.float().cpu().numpy() for o in outs]
            t3 = time.perf_counter()
            t.h2d, t.compute, t.d2h, t.total = t1 - t0, t2 - t1, t3 - t2, t3 - t0
            return res
        except (InputError, BackendError):
            raise
        except Exception as e:
            raise BackendError(f"torch failed to run {self.path.name} on {self.device}: {_first_line(e)}") from None

    def _run_cuda(self, arr: np.ndarray) -> list[np.ndarray]:
        """Pinned host buffer -> async H2D -> forward (graph replay) -> async D2H into pinned buffers; events time each."""
        torch = self.torch
        stream = self._stream
        host_in = self._pinned_buffer("in", arr.shape, torch.float32)
        host_in.numpy()[...] = arr
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        t0 = time.perf_counter()
        with torch.cuda.stream(stream):
            ev[0].record(stream)
            x = host_in.to(self.tdev, non_blocking=True)
            ev[1].record(stream)
            outs = self.run_tensor(x, clone=False)
            ev[2].record(stream)
            host_outs = []
            for i, o in enumerate(outs):
                h = self._pinned_buffer(f"out{i}", tuple(o.shape), torch.float32)
                h.copy_(o.float(), non_blocking=True)
                host_outs.append(h)
            ev[3].record(stream)
        ev[3].synchronize()
        t = self.last_timings
        t.h2d = ev[0].elapsed_time(ev[1]) / 1e3
        t.compute = ev[1].elapsed_time(ev[2]) / 1e3
        t.d2h = ev[2].elapsed_time(ev[3]) / 1e3
        t.total = time.perf_counter() - t0
        return [h.numpy().copy() for h in host_outs]

    def _close(self) -> None:
        self._graphs.clear()
        self._pinned.clear()
        self.module = None
        if self.device_kind == "cuda":
            try:
                self.torch.cuda.empty_cache()
            except Exception:
                pass


class TorchBackend(Backend):
    """PyTorch: Ultralytics ``.pt`` checkpoints, TorchScript, ``torch.export`` programs.

    Devices: ``cpu``, ``cuda[:N]``, ``npu[:N]`` (torch_npu), ``mlu[:N]`` (torch_mlu).

    Options:
        precision: "fp32" (default), "fp16" or "bf16" (``half=True`` is "fp16").
        trust_pickle: fully unpickle checkpoints the safe loader refuses (warns; runs code in the file).
        cuda_graph: capture and replay CUDA graphs per input shape on CUDA (default True).
        compile: wrap the model in ``torch.compile`` (``compile_mode`` picks the mode).
        imgsz: input size for the probe run that discovers the output layout (default: from the file, else 640).
        threads: CPU threads (``torch.set_num_threads``).
        fuse: fuse Conv+BatchNorm of Ultralytics models (default True).

    Example:
        >>> with TorchBackend.open("yolov8n.pt", "cpu") as s:  # doctest: +SKIP
        ...     outputs = s.run(np.zeros((1, 3, 640, 640), np.float32))
    """

    name = "torch"
    runtime_module = "torch"
    extra = "torch"
    suffixes = TORCH_SUFFIXES

    @classmethod
    def require(cls) -> Any:
        if not cls.available():
            raise BackendUnavailableError(
                "backend 'torch' needs PyTorch, which is not installed; install the pinned build with: "
                "pip install torch==2.14.1 torchvision==0.29.1 (see docs/accelerators.md)"
            )
        return super().require()

    @classmethod
    def devices(cls) -> list[str]:
        cls.require()
        return available_devices()

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, **options: Any) -> TorchSession:
        torch = cls.require()
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        tdev = resolve_device(device)
        if options.get("threads"):
            torch.set_num_threads(int(options["threads"]))
        loaded = load_torch_model(path, trust_pickle=bool(options.get("trust_pickle")), fuse=options.get("fuse", True))
        return TorchSession(path, str(tdev), loaded, tdev, options)
