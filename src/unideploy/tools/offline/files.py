"""The files the offline stages exchange: tensor files (``.npy`` / raw ``.bin`` / ``.txt``) and their names.

Example:
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.npy"); save_tensor(p, np.ones((1, 2), np.float32))
    >>> float(load_tensor(p, "float32", (1, 2)).sum())
    2.0
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unideploy.core.atomic import atomic_write_bytes
from unideploy.core.errors import InputError

__all__ = [
    "FORMATS", "MANIFEST_NAME", "MANIFEST_VERSION", "OUTPUTS_NAME", "OUT_FORMATS", "check_format", "load_tensor",
    "save_tensor", "stem_for", "tensor_files",
]

MANIFEST_NAME = "manifest.json"
OUTPUTS_NAME = "outputs.json"
FORMATS = ("npy", "bin")
OUT_FORMATS = ("npy", "bin", "txt")
MANIFEST_VERSION = 1


def check_format(fmt: str, valid: Sequence[str], flag: str) -> str:
    """``fmt`` lower-cased without a leading dot, if it is one of ``valid``; else an InputError naming ``flag``."""
    f = str(fmt).lower().lstrip(".")
    if f not in valid:
        raise InputError(f"{flag} must be one of {', '.join(valid)}; got {fmt!r}")
    return f


def stem_for(name: str, used: set[str]) -> str:
    """A file stem for an item name, unique within one run (``a.jpg`` and ``a.png`` -> ``a``, ``a_png``)."""
    base = Path(name.replace("#", "_")).stem or "item"
    stem = base
    if stem in used:
        stem = f"{base}_{Path(name).suffix.lstrip('.') or 'x'}"
    k = 1
    while stem in used:
        stem = f"{base}_{k}"
        k += 1
    used.add(stem)
    return stem


def save_tensor(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write ``arr`` as ``.npy`` (with header) or ``.bin`` (raw C-order bytes) or ``.txt`` by the suffix.

    ``.txt`` holds the values as rows of the last axis (``np.savetxt`` of the array reshaped to 2-D).

    Raises:
        OutputError: the file could not be written (full disk, no permission, too large); nothing is left under
            its name or as a temporary file.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.bin"); save_tensor(p, np.zeros((1, 3), np.float32))
        >>> os.path.getsize(p)
        12
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".bin", ".txt"):
        raise InputError(f"{path}: expected a .npy, .bin or .txt file name, got suffix {path.suffix!r}")
    arr = np.ascontiguousarray(arr)
    buf = io.BytesIO()  # encoded in memory, written atomically: numpy's own writers lose the cause of a short write
    if suffix == ".npy":
        np.save(buf, arr)
    elif suffix == ".bin":
        buf.write(arr.tobytes())
    else:
        two_d = arr.reshape(-1, arr.shape[-1]) if arr.ndim >= 2 else arr.reshape(1, -1)
        np.savetxt(buf, two_d, fmt="%.9g" if arr.dtype.kind == "f" else "%d")
    atomic_write_bytes(path, buf.getvalue())


def load_tensor(path: str | os.PathLike, dtype: Any = None, shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a tensor file written by :func:`save_tensor` (or by any ais_bench-style tool).

    ``.npy`` files carry their dtype and shape; when ``dtype``/``shape`` are given they are checked.
    ``.bin`` and ``.txt`` files need ``dtype`` and ``shape`` (a ``None`` in ``shape`` is not allowed).

    Raises:
        InputError: the file is missing, truncated, or its dtype / size / shape differ from the expected ones;
            the message names the file.

    Example:
        >>> x = load_tensor("pre/img0.bin", "float32", (1, 3, 640, 640))  # doctest: +SKIP
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"{path}: expected a tensor file, it does not exist")
    want = tuple(int(d) for d in shape) if shape is not None else None
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(
                f"{path}: expected a complete .npy file, could not read it ({str(e).splitlines()[0]})"
            ) from None
        if dtype is not None and arr.dtype != np.dtype(dtype):
            raise InputError(f"{path}: expected dtype {np.dtype(dtype).name}, the file holds {arr.dtype.name}")
        if want is not None and arr.shape != want:
            raise InputError(f"{path}: expected shape {want}, the file holds {arr.shape}")
        return arr
    if suffix not in (".bin", ".txt"):
        raise InputError(f"{path}: expected a .npy, .bin or .txt tensor file, got suffix {path.suffix!r}")
    if dtype is None or want is None or any(d is None or d < 0 for d in want):
        raise InputError(
            f"{path}: a {suffix} file has no header; its dtype and full shape must be known "
            f"(from the model's inputs or a manifest), got dtype={dtype}, shape={shape}"
        )
    dt = np.dtype(dtype)
    n = int(np.prod(want))
    if suffix == ".bin":
        size = path.stat().st_size
        if size != n * dt.itemsize:
            what = "truncated" if size < n * dt.itemsize else "too long"
            raise InputError(
                f"{path}: expected {n * dt.itemsize} bytes ({dt.name} {want}), the file has {size} "
                f"bytes ({what}; a shape or dtype mismatch, or an incomplete copy)"
            )
        return np.fromfile(path, dt).reshape(want)
    try:
        arr = np.loadtxt(path, dtype=dt, ndmin=1).reshape(-1)
    except ValueError as e:
        raise InputError(f"{path}: expected numbers, could not parse it ({str(e).splitlines()[0]})") from None
    if arr.size != n:
        raise InputError(f"{path}: expected {n} values ({dt.name} {want}), the file has {arr.size}")
    return arr.reshape(want)


def tensor_files(d: Path) -> dict[str, Path]:
    """stem -> file of every ``.npy`` / ``.bin`` tensor file in folder ``d`` (hidden files left out).

    Raises:
        InputError: ``d`` is not a folder, holds no tensor file, or two files share a stem.
    """
    if not d.is_dir():
        raise InputError(f"{d}: expected a folder of .npy/.bin tensor files, it is not a folder")
    files: dict[str, Path] = {}
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix.lower() in (".npy", ".bin") and not f.name.startswith("."):
            if f.stem in files:
                raise InputError(f"{d}: two tensor files share the name {f.stem!r} ({files[f.stem].name}, {f.name})")
            files[f.stem] = f
    if not files:
        raise InputError(f"{d}: expected .npy or .bin tensor files, found none")
    return files
