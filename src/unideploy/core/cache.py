"""Where unideploy keeps files between runs (compiled-model caches, the private rknn-toolkit2 venv).

``$UNIDEPLOY_CACHE`` if set, else ``$XDG_CACHE_HOME/unideploy``, else ``~/.cache/unideploy``.

Example:
    >>> import os
    >>> os.environ["UNIDEPLOY_CACHE"] = "/tmp/ud"
    >>> str(cache_dir("openvino"))
    '/tmp/ud/openvino'
    >>> del os.environ["UNIDEPLOY_CACHE"]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "cache_dir", "folder_lock"]

LOCK_NAME = ".unideploy.lock"


def cache_dir(*parts: str) -> Path:
    """The unideploy cache folder, or ``parts`` below it (not created here)."""
    base = os.environ.get("UNIDEPLOY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "unideploy"
    )
    return Path(base, *parts)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[bool]:
    """Hold an exclusive lock on ``folder`` (a ``.unideploy.lock`` file in it) across processes and threads.

    For caches that a runtime writes in place: OpenVINO writes a compiled blob straight to its final name and
    reads blobs through a memory map, so a process compiling from the same folder can map a blob that another is
    rewriting (SIGBUS), or delete as unreadable one that another is still writing. Every unideploy process takes
    this lock around its compile and its pruning, so no blob is read while it is written. The lock is advisory: a
    program that is not unideploy and shares the folder is not held by it. Each call opens its own descriptor, so
    threads of one process exclude each other too.

    Yields True while the lock is held, False where it cannot be taken (a read-only folder, no ``fcntl`` on this
    platform): the caller goes on unlocked, as before.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks through fcntl
        yield False
        return
    try:
        fd = os.open(os.path.join(os.fspath(folder), LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; released by close (or by the process's death)
        yield True
    finally:
        os.close(fd)
