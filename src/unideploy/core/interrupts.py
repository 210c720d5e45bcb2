"""Interrupted runs: SIGINT and SIGTERM as one exception, and what a batch run had done when it came.

The command line installs :func:`handle_signals` around every subcommand: the first SIGINT (Ctrl-C) or SIGTERM
raises :class:`Interrupted` (a ``KeyboardInterrupt``, so every ``finally`` and context manager runs: streams
join their threads, runtimes close, atomic writes remove their temporary files). A batch tool that catches it
records how far it got with :func:`note_progress`, and the command line prints that as one line and exits with
128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell does for a killed command.

While that cleanup runs a second signal is ignored (a note says so); a third one ends the process at once with the
signal's default action. ``kill -9`` always works, and loses only the checkpoint of the run (see
:mod:`unideploy.core.checkpoint`).

Example:
    >>> with handle_signals():  # doctest: +SKIP
    ...     run_the_batch()      # SIGTERM here raises Interrupted(SIGTERM)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Interrupted", "Progress", "exit_status", "handle_signals", "interrupted_line", "note_progress"]


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM turned into an exception; ``signum`` says which.

    Example:
        >>> Interrupted(signal.SIGTERM).exit_status
        143
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a command ended by that signal."""
        return 128 + self.signum


@dataclass
class Progress:
    """How far a batch run got before it stopped.

    Attributes:
        done: items whose outputs are complete (earlier runs of a resumed job included).
        total: items in the source (None when unknown, e.g. a live stream).
        unit: what an item is (``"image"``, ``"frame"``, ``"sample"``).
        resumable: True when a checkpoint was written, so that ``--resume`` continues after ``done``.
    """

    done: int
    total: int | None = None
    unit: str = "item"
    resumable: bool = False

    def describe(self) -> str:
        """``"12 of 40 image(s) done; rerun with --resume to continue"``."""
        of = f" of {self.total}" if self.total else ""
        text = f"{self.done}{of} {self.unit}(s) done"
        return text + ("; rerun with --resume to continue" if self.resumable else "")


def note_progress(exc: BaseException, progress: Progress) -> None:
    """Attach ``progress`` to ``exc`` (an interrupt or error on its way out) unless an inner run did already."""
    if getattr(exc, "progress", None) is None:
        try:
            exc.progress = progress  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__: nothing to attach to
            pass


def exit_status(exc: KeyboardInterrupt) -> int:
    """130 for SIGINT (or a plain KeyboardInterrupt), 143 for SIGTERM."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def interrupted_line(exc: KeyboardInterrupt) -> str:
    """One line for the user: ``"interrupted by SIGTERM: 12 of 40 image(s) done; rerun with --resume ..."``."""
    name = signal.Signals(int(getattr(exc, "signum", signal.SIGINT))).name
    progress: Progress | None = getattr(exc, "progress", None)
    return f"interrupted by {name}" + (f": {progress.describe()}" if progress is not None else "")


@contextlib.contextmanager
def handle_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, the first of ``signals`` raises :class:`Interrupted`; a second is ignored while the
    cleanup runs; a third takes the signal's default action (the process ends at once). The previous handlers
    come back afterwards. Outside the main thread (where Python cannot set handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = [0]

    def handler(signum: int, frame: Any) -> None:
        seen[0] += 1
        if seen[0] == 1:
            raise Interrupted(signum)
        if seen[0] == 2:
            with contextlib.suppress(OSError, ValueError):
                os.write(sys.stderr.fileno(), b"stopping: finishing the current write; signal again to end at once\n")
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
