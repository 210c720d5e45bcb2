"""One progress bar for every command that walks a data set: a tqdm bar on stderr, or a silent stand-in.

Every command decides the same way: a bar only when it is enabled and stderr is a terminal, so logs, pipes and
CI output never get bar redraws.

Example:
    >>> with progress_bar(3, "eval", enabled=False) as bar:
    ...     for _ in range(3):
    ...         bar.update(1)
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar", "NullBar", "on_terminal"]


def on_terminal() -> bool:
    """True when stderr is a terminal (where bars and transient notes belong)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class NullBar:
    """A bar that shows nothing: the ``update`` / ``close`` / context-manager surface of a tqdm bar."""

    def update(self, n: int = 1) -> None:
        """Do nothing (a tqdm bar advances by ``n``)."""

    def close(self) -> None:
        """Do nothing."""

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "img", leave: bool = True) -> Any:
    """A progress bar on stderr counting ``unit`` up to ``total``; a :class:`NullBar` when not ``enabled`` or when
    stderr is not a terminal.

    Both have ``update(n)``, ``close()`` and work as context managers, so callers need no ``if bar`` checks.

    Args:
        total: expected count (None: unknown; the bar then only counts).
        desc: label at the left of the bar ("predict", "eval", ...).
        enabled: False gives the silent stand-in (``--quiet``, or ``progress=False`` from Python).
        unit: what is counted.
        leave: keep the finished bar on screen.
    """
    if not enabled or not on_terminal():
        return NullBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=leave)
