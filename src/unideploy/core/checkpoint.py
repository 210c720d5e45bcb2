"""Resume checkpoints: how far a batch run got, kept beside its outputs when it stops early.

A batch tool (``predict``, ``preprocess``, ``infer``, ``postprocess``) that is interrupted or fails writes one
hidden JSON file next to its outputs (``.<output name>.resume.json``): the items done, and what its aggregate
outputs (COCO JSON records, JSON-lines offsets, manifest entries) held at that point. A rerun with
``resume=True`` (``--resume``) reads it, skips those items and produces the same final files, byte for byte, as
an uninterrupted run; a run that completes deletes it.

The checkpoint carries a *key* (the model file's size and modification time, the source's item names, the
options and output paths); a rerun whose key differs is refused, naming what changed, rather than mixing the
outputs of two different runs. A checkpoint is written atomically, so a second interrupt cannot leave half a file;
``kill -9`` leaves none (a resumed run then starts from the first item).

Example:
    >>> import tempfile, os
    >>> ck = Checkpoint(os.path.join(tempfile.mkdtemp(), ".preds.json.resume.json"), {"model": "m.onnx"})
    >>> ck.save({"upto": 12}), ck.load()
    (True, {'upto': 12})
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unideploy.core.atomic import atomic_write_bytes
from unideploy.core.errors import InputError

__all__ = ["CHECKPOINT_SUFFIX", "Checkpoint", "checkpoint_beside", "file_key", "names_digest"]

CHECKPOINT_SUFFIX = ".resume.json"
VERSION = 1


def checkpoint_beside(path: str | os.PathLike, folder: bool = False) -> Path:
    """Where the checkpoint of an output goes: ``dir/.name.resume.json`` for a file, ``folder/.resume.json`` for
    a folder (hidden either way, so the tools that list a folder's files leave it out)."""
    p = Path(path)
    return p / CHECKPOINT_SUFFIX if folder else p.parent / f".{p.name}{CHECKPOINT_SUFFIX}"


def file_key(path: str | os.PathLike) -> dict[str, Any]:
    """A file's identity for a checkpoint key: its resolved path, size and modification time (ns)."""
    p = Path(path).resolve()
    try:
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": str(p)}


def names_digest(names: Iterable[str]) -> str:
    """SHA-256 of a sequence of names (one per line): which items a source holds, in which order."""
    h = hashlib.sha256()
    for n in names:
        h.update(str(n).encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _normal(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples as lists, keys as strings), for comparing keys."""
    return json.loads(json.dumps(obj, default=str))


class Checkpoint:
    """One run's checkpoint file: ``load`` (checked against ``key``), ``save`` (atomic) and ``discard``.

    Args:
        path: the checkpoint file (see :func:`checkpoint_beside`).
        key: what identifies the run (JSON-serialisable); a saved checkpoint with another key is refused.
    """

    def __init__(self, path: str | os.PathLike, key: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = _normal(key)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is no checkpoint.

        Raises:
            InputError: the file is not a checkpoint, or it was written by a run with another key (the message
                names the first difference and how to start again).
        """
        if not self.path.is_file():
            return None
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{self.path}: expected a resume checkpoint, could not read it ({e}); delete it "
                             "to start again") from None
        if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("state"), dict):
            raise InputError(f"{self.path}: expected a resume checkpoint of version {VERSION}; delete it to start "
                             "again")
        saved = doc.get("key") or {}
        if saved != self.key:
            diff = next((k for k in sorted(set(saved) | set(self.key)) if saved.get(k) != self.key.get(k)), "?")
            raise InputError(f"{self.path}: the checkpoint was written by a run with another {diff} "
                             f"(saved {saved.get(diff)!r}, now {self.key.get(diff)!r}); rerun without --resume "
                             "to start again")
        return doc["state"]

    def save(self, state: dict[str, Any]) -> bool:
        """Write ``state`` atomically; False when it could not be written (a full disk: the run's own error is
        what the user needs to see, and a rerun then starts from the first item)."""
        data = json.dumps({"version": VERSION, "key": self.key, "state": state}, default=str).encode("utf-8")
        try:
            atomic_write_bytes(self.path, data)
            return True
        except OSError:  # OutputError included
            return False

    def discard(self) -> None:
        """Delete the checkpoint (a completed run, or a fresh run replacing an old one)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
