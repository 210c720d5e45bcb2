"""Resumable batch runs into sinks (``predict``, ``postprocess``): checkpoint on a stop, restore on ``resume``.

A run goes through its items in source order and hands each outcome to every sink. When it stops early (SIGINT,
SIGTERM, a full disk, any error) :meth:`SinkRun.stop` aborts the sinks (the COCO JSON and a video are not
written, the JSON-lines file is cut to the items done, per-image files already written are complete), writes a
checkpoint beside the first output and attaches the progress to the exception for the command line's one-line
message. A rerun with ``resume=True`` restores the sinks from the checkpoint and skips the items done; the final
files are the same, byte for byte, as those of an uninterrupted run. A completed run deletes the checkpoint.

Example:
    >>> run = SinkRun(sinks, ("preds.json", False), key, resume=True)  # doctest: +SKIP
    >>> for item in items[run.position:]: ...  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from unideploy.core.checkpoint import Checkpoint, checkpoint_beside
from unideploy.core.errors import InputError
from unideploy.core.interrupts import Progress, note_progress
from unideploy.core.sinks import Sinks, VideoSink

__all__ = ["SinkRun", "output_anchor"]


def output_anchor(*outputs: tuple[Any, bool]) -> tuple[str | os.PathLike, bool] | None:
    """The first ``(path, is_folder)`` of ``outputs`` given as a path (not a sink object, not None): where the
    checkpoint goes."""
    for value, folder in outputs:
        if isinstance(value, (str, os.PathLike)) and str(value):
            return value, folder
    return None


class SinkRun:
    """The outputs of one resumable batch run.

    Args:
        sinks: the run's sinks (built; nothing added yet).
        anchor: ``(path, is_folder)`` of the output the checkpoint sits beside (None: no output given as a path).
        key: what identifies the run (model file, source items, options, outputs); see
            :class:`~unideploy.core.checkpoint.Checkpoint`.
        resume: continue from the checkpoint when there is one (else start at the first item, with a note in
            :attr:`note`); False deletes a stale checkpoint.

    Raises:
        InputError: ``resume`` without an output path, with a video output (a video file cannot be continued), or
            a checkpoint of another run.
    """

    def __init__(self, sinks: Sinks, anchor: tuple[str | os.PathLike, bool] | None, key: dict[str, Any] | None,
                 resume: bool = False) -> None:
        self.sinks = sinks
        video = any(isinstance(s, VideoSink) for s in sinks.sinks)  # a video file cannot be continued
        self.ckpt = (Checkpoint(checkpoint_beside(*anchor), key)
                     if anchor is not None and key is not None and not video else None)
        self.state: dict[str, Any] = {}
        self.note = ""
        if not resume:
            if self.ckpt is not None:
                self.ckpt.discard()
            return
        if video:
            raise InputError("resume cannot continue a video output (save_video, or save_img for a video source); "
                             "rerun without resume")
        if self.ckpt is None:
            why = "a source of files and " if anchor is not None else ""
            raise InputError(f"resume needs {why}an output written to a path (save_json, save_txt, ...) to continue")
        self.state = self.ckpt.load() or {}
        if self.state:
            sinks.restore(self.state["sinks"], int(self.state["upto"]))
        else:
            self.note = f"no checkpoint at {self.ckpt.path}: starting at the first item"

    @property
    def position(self) -> int:
        """Items done by earlier runs (skip this many from the start of the source)."""
        return int(self.state.get("position", 0))

    @property
    def extra(self) -> dict[str, Any]:
        """What the earlier runs counted (the tool's own summary fields), empty for a fresh run."""
        return dict(self.state.get("extra", {}))

    def _save(self, position: int, upto: int, extra: dict[str, Any], states: list[Any]) -> bool:
        if self.ckpt is None:
            return False
        return self.ckpt.save({"position": position, "upto": upto, "extra": extra, "sinks": states})

    def finish(self, position: int, upto: int, extra: dict[str, Any], total: int | None = None,
               unit: str = "item") -> None:
        """Every item is done: close the sinks (writing the aggregate files) and delete the checkpoint. When
        closing fails (a full disk at the end), a checkpoint of the whole run is kept so that a resumed run only
        writes the files again."""
        states = self.sinks.checkpoint(upto)
        try:
            self.sinks.close()
        except BaseException as e:
            note_progress(e, Progress(position, total, unit, resumable=self._save(position, upto, extra, states)))
            raise e
        if self.ckpt is not None:
            self.ckpt.discard()

    def stop(self, exc: BaseException, position: int, upto: int, extra: dict[str, Any], total: int | None,
             unit: str) -> None:
        """The run stopped early at ``exc``: abort the sinks, write the checkpoint, attach the progress to ``exc``.

        Args:
            exc: the interrupt or error on its way out.
            position: items done, counted from the start of the source (earlier runs included).
            upto: the source index of the first item not done (what the sinks' checkpoints cover).
            extra: the tool's summary counters so far.
            total: items in the source (None: unknown). unit: ``"image"``, ``"frame"``.
        """
        states = self.sinks.checkpoint(upto)
        self.sinks.abort()
        saved = self._save(position, upto, extra, states) if position else False
        note_progress(exc, Progress(position, total, unit, resumable=saved))
