"""Atomic file writes: a temporary file in the same folder, then ``os.replace``; failures as one-line errors.

A reader never sees half a file, an interrupted or failed write never replaces a good file with a bad one, and a
write that fails (no space left, no permission, a file size limit) raises
:class:`~unideploy.core.errors.OutputError` naming the path and the cause, with the temporary file removed.

Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.json"); atomic_write_json(p, {"a": 1})
    >>> open(p).read().split()
    ['{', '"a":', '1', '}']
"""

from __future__ import annotations

import errno as errno_names
import json
import os
import secrets
from pathlib import Path
from typing import Any

from unideploy.core.errors import OutputError

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "make_dirs", "output_error"]


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def output_error(path: str | os.PathLike, err: OSError) -> OutputError:
    """One line naming the path and the cause: ``out/a.json: could not write it: No space left on device
    (ENOSPC)``; an OutputError is passed through as it is."""
    if isinstance(err, OutputError):
        return err
    code = err.errno
    cause = err.strerror or str(err) or type(err).__name__
    name = errno_names.errorcode.get(code, "") if code else ""
    return OutputError(f"{path}: could not write it: {cause}" + (f" ({name})" if name else ""), code)


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a failure is an :class:`OutputError` naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e) from None
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (creating parent folders), with the mode the umask gives an ordinary
    new file (0644 under umask 022), not the temporary file's private 0600.

    Raises:
        OutputError: the folder or file could not be written (full disk, no permission, too large); the
            temporary file is removed and an earlier file at ``path`` is left as it was.
    """
    path = Path(path)
    make_dirs(path.parent)
    # the temporary name is chosen before the file exists, so that an interrupt (KeyboardInterrupt can come
    # between any two bytecodes) at any point after the file is created still finds and removes it
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # POSIX
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise output_error(path, e) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")
