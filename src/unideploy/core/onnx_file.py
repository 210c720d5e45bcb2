"""An ONNX file read once, without the ``onnx`` package: its metadata and its external-data references.

:func:`read_onnx` reads the file and walks its protobuf once (with :mod:`unideploy.core.protobuf`), giving both
what the spec needs (``metadata_props``) and what the security check needs (every tensor's ``external_data``).
A backend that opens ONNX files calls it in ``open()``, checks the references with :func:`check_external_refs`
before the runtime reads the file, and keeps the metadata for the spec, so the file is parsed once.

**External data** (CVE-2024-27318 class): every ``external_data`` ``location`` of every tensor in the model
(graph initializers, sparse initializers, tensors in node attributes, sub-graphs, functions, training graphs)
must name a regular file inside the model's folder. Absolute paths, ``..`` components, symlinks that resolve
outside the folder and ONNX Runtime's in-memory marker (``*/_ORT_MEM_ADDR_/*``) are refused before any runtime
opens the model.

Example:
    >>> f = read_onnx("model.onnx")  # doctest: +SKIP
    >>> check_external_refs(f.path, f.external_refs)  # doctest: +SKIP
    >>> f.metadata["names"]  # doctest: +SKIP
    "{0: 'person', ...}"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from unideploy.core.errors import ModelError, UnsafeModelError
from unideploy.core.protobuf import Buffer, iter_fields

__all__ = [
    "ExternalRef", "OnnxFile", "ORT_MEM_ADDR", "read_onnx", "read_onnx_metadata", "onnx_external_refs",
    "check_external_refs", "check_onnx_external_data",
]


@dataclass(frozen=True)
class ExternalRef:
    """One tensor's external-data reference in an ONNX model (offset/length None when not given)."""

    tensor: str
    location: str
    offset: int | None = None
    length: int | None = None


@dataclass(frozen=True)
class OnnxFile:
    """What one read of an ONNX file found.

    Attributes:
        path: the file.
        metadata: ``metadata_props`` (key -> value).
        external_refs: every external-data reference, in file order.
        has_graph: whether the ModelProto has a graph (a file without one is not a runnable model).
    """

    path: Path
    metadata: dict[str, str]
    external_refs: tuple[ExternalRef, ...]
    has_graph: bool

    def require_graph(self) -> OnnxFile:
        """``self``; a ModelError when the file has no graph."""
        if not self.has_graph:
            raise ModelError(f"{self.path}: expected an ONNX model (protobuf ModelProto with a graph), found none")
        return self


#: ONNX Runtime reads "external data" at a raw memory address when it sees this location
ORT_MEM_ADDR = "*/_ORT_MEM_ADDR_/*"
_MAX_DEPTH = 64

# message kind -> {field number: message kind of that (length-delimited) field}
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _text(v: object) -> str:
    return bytes(v).decode("utf-8", "replace")  # type: ignore[call-overload]


def _tensor_ref(buf: Buffer) -> ExternalRef | None:
    name, entries = "", []
    for num, wt, val in iter_fields(buf):
        if num == 8 and wt == 2:
            name = _text(val)
        elif num == 13 and wt == 2:
            kv = {n: bytes(v) for n, w, v in iter_fields(val) if w == 2}  # type: ignore[arg-type]
            entries.append((kv.get(1, b"").decode("utf-8", "replace"), kv.get(2, b"")))
    if not entries:
        return None
    d = dict(entries)
    if "location" not in d:
        raise ValueError(f"tensor {name!r} has external_data without a location")
    try:
        loc = d["location"].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"tensor {name!r}: external data location is not valid UTF-8") from None

    def num_or_none(key: str) -> int | None:
        v = d.get(key)
        if v is None:
            return None
        try:
            return int(v)
        except ValueError:
            raise ValueError(f"tensor {name!r}: external data {key} {v!r} is not an integer") from None

    return ExternalRef(name, loc, num_or_none("offset"), num_or_none("length"))


def _walk(buf: Buffer, kind: str, depth: int, out: list[ExternalRef]) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"graphs nested deeper than {_MAX_DEPTH} levels")
    if kind == "tensor":
        ref = _tensor_ref(buf)
        if ref is not None:
            out.append(ref)
        return
    sub = _SCHEMA[kind]
    for num, wt, val in iter_fields(buf):
        if wt == 2 and num in sub:
            _walk(val, sub[num], depth + 1, out)  # type: ignore[arg-type]


def read_onnx(path: str | os.PathLike) -> OnnxFile:
    """Read and parse an ONNX file once: its metadata and its external-data references.

    Raises:
        ModelError: the file cannot be read or is not a parsable ONNX protobuf.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelError(f"{p}: expected a readable ONNX file, got {type(e).__name__}: {e.strerror or e}") from None
    deep = b"location" in data  # no external_data entry can exist without its "location" key
    meta: dict[str, str] = {}
    refs: list[ExternalRef] = []
    has_graph = False
    try:
        for num, wt, val in iter_fields(memoryview(data)):
            if wt != 2:
                continue
            if num == 7:
                has_graph = True
            elif num == 14:
                kv = {n: v for n, w, v in iter_fields(val) if w == 2}  # type: ignore[arg-type]
                meta[_text(kv.get(1, b""))] = _text(kv.get(2, b""))
            if deep and num in _SCHEMA["model"]:
                _walk(val, _SCHEMA["model"][num], 1, refs)  # type: ignore[arg-type]
    except (ValueError, IndexError) as e:
        raise ModelError(
            f"{p}: expected an ONNX model (protobuf ModelProto), but it could not be parsed ({e})"
        ) from None
    return OnnxFile(p, meta, tuple(refs), has_graph)


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """``metadata_props`` of an ONNX file.

    Raises:
        ModelError: the file is not a valid ONNX protobuf with a graph.
    """
    return dict(read_onnx(path).require_graph().metadata)


def onnx_external_refs(path: str | os.PathLike) -> list[ExternalRef]:
    """Every external-data reference in an ONNX file.

    Raises:
        ModelError: the file cannot be read or is not a parsable ONNX protobuf.
    """
    return list(read_onnx(path).external_refs)


def _inside(child: str, roots: list[str]) -> bool:
    return any(child == r or child.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def check_external_refs(path: str | os.PathLike, refs: tuple[ExternalRef, ...] | list[ExternalRef]) -> list[ExternalRef]:
    """Refuse external-data references (of the ONNX file ``path``) that would be read from outside its folder.

    A location must be a relative path without ``..`` components that names an existing regular file
    in the model's folder (or a sub-folder), after resolving symlinks; ``offset + length`` must lie within
    that file. The folder is the one the model was opened from; when the model file itself is a symlink
    (a Hugging Face cache snapshot), the folder its target lives in is accepted too.

    Returns:
        ``refs`` as a list.

    Raises:
        UnsafeModelError: a location is absolute, has a ``..`` component, is ONNX Runtime's memory-address
            marker, or resolves (through symlinks) outside the model's folder.
        ModelError: a referenced file is missing or shorter than the data it should hold.
    """
    refs = list(refs)
    if not refs:
        return refs
    p = Path(path)
    base = p.parent
    roots = sorted({os.path.realpath(base), os.path.realpath(p.resolve().parent)})
    for ref in refs:
        loc = ref.location
        what = f"{p.name}: tensor {ref.tensor!r} has external data at {loc!r}"
        if not loc or "\x00" in loc:
            raise UnsafeModelError(
                f"{what}; expected a file name relative to the model's folder, got an empty or NUL-containing one"
            )
        if loc.startswith(ORT_MEM_ADDR):
            raise UnsafeModelError(
                f"{what}: that is ONNX Runtime's in-memory address marker, which a model file must not use"
            )
        posix, win = PurePosixPath(loc), PureWindowsPath(loc)
        if posix.is_absolute() or win.is_absolute() or win.drive or win.root or loc.startswith(("/", "\\", "~")):
            raise UnsafeModelError(f"{what}; expected a path relative to the model's folder, got an absolute one")
        if ".." in posix.parts or ".." in win.parts:
            raise UnsafeModelError(f"{what}; expected a path inside the model's folder, got one with '..'")
        real = os.path.realpath(base / loc)
        if not _inside(real, roots):
            raise UnsafeModelError(
                f"{what}, which resolves (through a symlink) to {real}, outside the model's folder {roots[0]}"
            )
        if not os.path.isfile(real):
            raise ModelError(f"{what}; expected that file beside the model, it does not exist or is not a regular file")
        size = os.path.getsize(real)
        off, length = ref.offset or 0, ref.length
        if off < 0 or (length is not None and length < 0) or off > size or (length is not None and off + length > size):
            raise ModelError(f"{what} (offset {off}, length {length}); the file holds only {size} bytes")
    return refs


def check_onnx_external_data(path: str | os.PathLike) -> list[ExternalRef]:
    """Read ``path`` and refuse it when its external data would be read from outside its own folder
    (see :func:`check_external_refs`).

    Returns:
        The references found (empty for a self-contained model).

    Raises:
        UnsafeModelError, ModelError: as :func:`check_external_refs`; ModelError also when the file cannot be parsed.

    Example:
        >>> check_onnx_external_data("model.onnx")  # doctest: +SKIP
        [ExternalRef(tensor='w', location='model.onnx.data', offset=0, length=4096)]
    """
    return check_external_refs(path, read_onnx(path).external_refs)
