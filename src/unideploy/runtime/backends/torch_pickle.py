"""Reading PyTorch files without running them: the file format, and a checkpoint's metadata from its pickle.

:func:`read_torch_metadata` walks a ``torch.save`` pickle with inert stand-ins for every class and function it
names (:class:`_InertUnpickler` imports nothing and calls nothing), so the spec (names, imgsz, stride) of an
untrusted checkpoint is read without unpickling it. TorchScript and ``torch.export`` archives carry their
metadata as extra files (Ultralytics' ``config.txt``, unideploy's ``unideploy.json``).

Example:
    >>> meta = read_torch_metadata("yolov8n.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import ModelError

__all__ = ["file_format", "read_torch_metadata", "zip_extra"]

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
    # pose models: (keypoints, values per keypoint), from the head or the model's yaml, as Ultralytics' export writes
    kpt = _state(head).get("kpt_shape") if head is not None else None
    if kpt is None and isinstance(st.get("yaml"), dict):
        kpt = st["yaml"].get("kpt_shape")
    if isinstance(kpt, (list, tuple)) and len(kpt) == 2 and all(isinstance(v, int) for v in kpt):
        meta["kpt_shape"] = repr([int(kpt[0]), int(kpt[1])])
    meta["batch"] = "1"
    return meta


def zip_extra(path: Path) -> dict[str, str]:
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
        return zip_extra(p)
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
