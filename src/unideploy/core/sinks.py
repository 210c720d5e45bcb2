"""Sinks: where results go. COCO results JSON, YOLO txt labels, annotated images, an annotated video, JSON lines.

Every sink has one protocol (:class:`Sink`): ``add(outcome)`` for each item of a stream (an
:class:`~unideploy.core.sources.Outcome`: the item, its result or its error, and the decoded image when the
stream kept it) and ``close()`` once at the end; each is a context manager. The CLI and the library
(:func:`unideploy.predict`) build the same sinks.

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a half-written file and never clobbers a good one with a bad one. The JSON-lines
file is the exception on purpose: it grows line by line so that a live stream can be tailed; a run that stops
(interrupt, full disk) cuts it back to its last complete line. A write that fails (no space left, no
permission, file too large) raises :class:`~unideploy.core.errors.OutputError` naming the path and the cause.

A run that stops early calls ``abort()`` instead of ``close()`` (``Sinks.abort``): the COCO JSON and the video are
then not written under their final names (absent, not partial), per-image files already written are complete,
and the JSON-lines file covers exactly the items done. ``checkpoint(upto)`` / ``restore(state, upto)`` carry what an
aggregate sink held for the items before source index ``upto`` into a resumed run
(:mod:`unideploy.core.checkpoint`).

Example:
    >>> with Sinks.from_paths(save_json="preds.json", save_txt="labels/") as sinks:  # doctest: +SKIP
    ...     for outcome in predictor.stream("images/", keep_images=sinks.wants_image):
    ...         sinks.add(outcome)
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from unideploy.core.atomic import (atomic_write_bytes, atomic_write_json, atomic_write_text, make_dirs,
                                   output_error)
from unideploy.core.drawing import draw_classification, draw_detections, draw_result, write_image
from unideploy.core.errors import InputError, OutputError
from unideploy.core.results import Classifications, Detections
from unideploy.core.task_io import task_coco_fields, task_txt_lines

__all__ = [
    "Sink", "BaseSink", "Sinks", "CocoJsonSink", "YoloTxtSink", "ImageSink", "VideoSink", "JsonLinesSink",
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "coco_records", "classification_records",
    "yolo_txt", "draw_detections", "draw_classification", "draw_result", "write_image", "output_error", "make_dirs",
]


def coco_records(det: Detections, image_id: int, file_name: str) -> list[dict]:
    """COCO results records of one image: category_id = class index + 1, bbox = [x, y, w, h]."""
    return [
        {
            "image_id": image_id,
            "file_name": file_name,
            "category_id": int(c) + 1,
            "bbox": [round(float(v), 3) for v in box],
            "score": round(float(s), 5),
            **extra,
        }
        for box, s, c, extra in zip(det.xywh, det.confidence, det.class_id, task_coco_fields(det))
    ]


def classification_records(res: Classifications, image_id: int, file_name: str) -> list[dict]:
    """Top-k records of one classified image, best first."""
    return [{"image_id": image_id, "file_name": file_name, "class_id": int(c), "name": n, "score": round(float(p), 5)}
            for c, p, n in zip(res.class_id, res.confidence, res.class_names)]


def yolo_txt(det: Detections, with_conf: bool = True) -> str:
    """YOLO label text: ``class cx cy w h [conf]`` normalised to the image size, one box per line."""
    if det.image_shape is None:
        raise ValueError("Detections.image_shape is needed to normalise YOLO labels")
    h, w = det.image_shape
    lines = task_txt_lines(det, with_conf)  # segmentation / pose / OBB: Ultralytics' formats
    if lines is not None:
        return "\n".join(lines) + ("\n" if lines else "")
    lines = []
    for (x1, y1, x2, y2), s, c in zip(det.xyxy, det.confidence, det.class_id):
        vals = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
        line = f"{int(c)} " + " ".join(f"{v:.6f}" for v in vals)
        lines.append(line + (f" {s:.5f}" if with_conf else ""))
    return "\n".join(lines) + ("\n" if lines else "")


# -- the sink protocol --------------------------------------------------------------------------------------------


@runtime_checkable
class Sink(Protocol):
    """Where the outcomes of a stream go: ``add`` each :class:`~unideploy.core.sources.Outcome`, then ``close``.

    A sink that draws sets ``wants_image = True`` so that the stream keeps each decoded image for it; failed
    outcomes (``outcome.error``) reach every sink, and most ignore them.
    """

    def add(self, outcome: Any) -> None:
        """Take one item's outcome."""

    def close(self) -> None:
        """Finish: write what was collected; release files."""


class BaseSink:
    """Shared by the built-in sinks: ``wants_image``, the output ``path`` and the context-manager methods."""

    wants_image = False
    path: Path

    def add(self, outcome: Any) -> None:  # pragma: no cover - every sink overrides it
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to finish by default."""

    def abort(self) -> None:
        """The run stopped early: release what is open, write nothing more (by default: ``close``)."""
        self.close()

    def __enter__(self) -> BaseSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stem(name: str) -> str:
    return Path(name.replace("#", "_")).stem


class CocoJsonSink(BaseSink):
    """COCO results JSON: ``image_id`` = 1-based position in the source, ``category_id`` = class index + 1,
    written atomically on close. Classifications are written as top-k records
    (``{"image_id", "file_name", "class_id", "name", "score"}``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict] = []

    def add(self, outcome: Any) -> None:
        """Collect the records of one successful outcome."""
        if outcome.error is not None:
            return
        res, item = outcome.result, outcome.item
        records = classification_records if isinstance(res, Classifications) else coco_records
        self.records.extend(records(res, item.index + 1, item.name))

    def close(self) -> None:
        """Write the JSON (a list of records; empty when nothing was detected)."""
        atomic_write_json(self.path, self.records)

    def abort(self) -> None:
        """The run stopped early: the JSON is not written (absent rather than partial; a checkpoint keeps the
        records for a resumed run)."""

    def checkpoint(self, upto: int) -> dict[str, Any]:
        """The records of the items before source index ``upto`` (the JSON's ``image_id`` is the index + 1)."""
        return {"records": [r for r in self.records if r["image_id"] <= upto]}

    def restore(self, state: dict[str, Any], upto: int) -> None:
        """Start from a checkpoint's records (a resumed run adds the items from ``upto`` on)."""
        self.records = [r for r in state["records"] if r["image_id"] <= upto]


class YoloTxtSink(BaseSink):
    """One YOLO label file per image in a folder: ``class cx cy w h conf`` lines (normalised), or ``class score``
    lines for a classification. The folder is created at once."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = make_dirs(folder)

    def add(self, outcome: Any) -> None:
        """Write ``<stem>.txt`` of one successful outcome (atomically)."""
        if outcome.error is not None:
            return
        res = outcome.result
        if isinstance(res, Classifications):
            text = "".join(f"{int(c)} {float(p):.5f}\n" for c, p in zip(res.class_id, res.confidence))
        else:
            text = yolo_txt(res)
        atomic_write_text(self.path / f"{_stem(outcome.item.name)}.txt", text)


class ImageSink(BaseSink):
    """Annotated images in a folder, under the source's name (``.jpg`` unless it was ``.jpeg/.png/.bmp``)."""

    wants_image = True

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = make_dirs(folder)

    def add(self, outcome: Any) -> None:
        """Draw and write one successful outcome whose image was kept."""
        if outcome.error is not None or outcome.image is None:
            return
        name = outcome.item.name
        suffix = Path(name).suffix.lower()
        suffix = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
        write_image(self.path / f"{_stem(name)}{suffix}", draw_result(outcome.image, outcome.result))


class Sinks(BaseSink):
    """Several sinks as one: ``add`` and ``close`` reach each of them, in order.

    Example:
        >>> sinks = Sinks(CocoJsonSink("preds.json"), YoloTxtSink("labels/"))  # doctest: +SKIP
        >>> sinks = Sinks.from_paths(save_json="preds.json", save_img="annotated/")  # doctest: +SKIP
    """

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = list(sinks)

    @classmethod
    def from_paths(cls, save_json: str | os.PathLike | None = None, save_txt: str | os.PathLike | None = None,
                   save_img: str | os.PathLike | None = None, save_video: str | os.PathLike | None = None,
                   save_jsonl: str | os.PathLike | None = None) -> Sinks:
        """The sinks that ``predict``'s ``--save-*`` flags name (None: not written), in that order."""
        kinds = ((save_json, CocoJsonSink), (save_txt, YoloTxtSink), (save_img, ImageSink), (save_video, VideoSink),
                 (save_jsonl, JsonLinesSink))
        return cls(*(kind(path) for path, kind in kinds if path))

    @property
    def wants_image(self) -> bool:  # type: ignore[override]
        return any(getattr(s, "wants_image", False) for s in self.sinks)

    def add(self, outcome: Any) -> None:
        """Hand one outcome to every sink."""
        for s in self.sinks:
            s.add(outcome)

    def close(self) -> None:
        """Close every sink, even when one fails (the first failure is raised afterwards)."""
        error: BaseException | None = None
        for s in self.sinks:
            try:
                s.close()
            except BaseException as e:  # noqa: BLE001 - re-raised below, once every sink is closed
                error = error or e
        if error is not None:
            raise error

    def abort(self) -> None:
        """The run stopped early: ``abort()`` each sink that has it (``close()`` the others). Their own failures
        are dropped: the error or interrupt that stopped the run is the one to report."""
        for s in self.sinks:
            try:
                (getattr(s, "abort", None) or s.close)()
            except Exception:  # noqa: BLE001,S110 - see the docstring
                pass

    def checkpoint(self, upto: int) -> list[dict[str, Any]]:
        """The state of each sink that keeps one (COCO JSON, JSON lines) for the items before source index
        ``upto``, in order; sinks without ``checkpoint`` / ``restore`` (per-image files, callers' own) have none."""
        return [s.checkpoint(upto) for s in self.sinks if hasattr(s, "checkpoint")]

    def restore(self, states: list[dict[str, Any]], upto: int) -> None:
        """Hand each sink that keeps a state its state from :meth:`checkpoint` (a resumed run)."""
        keeping = [s for s in self.sinks if hasattr(s, "restore")]
        if len(states) != len(keeping):
            raise InputError(f"a checkpoint of {len(states)} aggregate output(s) cannot resume a run of "
                             f"{len(keeping)}; rerun without resume")
        for s, state in zip(keeping, states):
            s.restore(state, upto)


class VideoSink(BaseSink):
    """Annotated frames -> one video file (``.mp4`` as mp4v, ``.avi`` as MJPG), written atomically on close.

    The writer opens on the first frame (its size fixes the video's); later frames of another size are resized.
    ``fps`` None means the source's frame rate divided by the frame stride, which :func:`unideploy.predict` sets
    before the first frame (25 when nothing sets it). On close the finished file is checked (it must open and
    declare every frame written: OpenCV's writer does not report a full disk) before it is moved into place;
    ``abort`` deletes the unfinished file.

    Example:
        >>> sink = VideoSink("out.mp4", fps=25)  # doctest: +SKIP
        >>> sink.write(frame); sink.close()  # doctest: +SKIP
    """

    FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
    wants_image = True

    def __init__(self, path: str | os.PathLike, fps: float | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in self.FOURCC:
            raise InputError(f"{self.path}: expected a video file name ending in {', '.join(self.FOURCC)}, "
                             f"got {self.path.suffix or 'no suffix'!r}")
        self.fps = None if fps is None else float(fps)
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def add(self, outcome: Any) -> None:
        """Draw one successful outcome's result on its kept image and append it as a frame."""
        if outcome.error is None and outcome.image is not None:
            self.write(draw_result(outcome.image, outcome.result))

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR frame."""
        if self._writer is None:
            make_dirs(self.path.parent)
            h, w = frame.shape[:2]
            self._size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps or 25.0, self._size)
            if not self._writer.isOpened():
                self._writer = None
                self._remove_tmp()
                raise OutputError(f"{self.path}: could not write it: OpenCV could not open a video writer there")
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_LINEAR)
        self._writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def _remove_tmp(self) -> None:
        try:
            self._tmp.unlink()
        except OSError:
            pass

    def close(self) -> None:
        """Finish the file, check it and move it into place (nothing is written when no frame came).

        Raises:
            OutputError: the finished file does not open or holds fewer frames than were written (a full disk
                or a size limit); it is deleted, and an earlier file at the path is left as it was.
        """
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        cap = cv2.VideoCapture(str(self._tmp))
        try:
            found = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
        finally:
            cap.release()
        if found != self.frames:
            self._remove_tmp()
            got = "does not open" if found < 0 else f"holds {found}"
            raise OutputError(f"{self.path}: could not write it: {self.frames} frame(s) written, the finished file "
                              f"{got} (disk full or a file size limit?)")
        try:
            os.replace(self._tmp, self.path)
        except OSError as e:
            self._remove_tmp()
            raise output_error(self.path, e) from None

    def abort(self) -> None:
        """The run stopped early: release the writer and delete the unfinished file (no partial video)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._remove_tmp()


class JsonLinesSink(BaseSink):
    """One JSON object per line and per item (frame or image), flushed as it goes so a live stream can be tailed.

    Lines: ``{"index", "name", "frame", "image_shape", "detections": [...]}``, ``{"index", "name", "classes": [...]}``
    or ``{"index", "name", "error"}``. Unlike the other sinks this file grows while the run goes on (not atomic),
    which is what a stream needs; it is opened (emptied) at the first line, or at ``close`` when none came, so
    that a run failing before its first item leaves an earlier file alone. A write that fails cuts the file back to its last
    complete line before the error is raised, and ``abort`` cuts it back to the items done (the last
    :meth:`checkpoint`), so every line in it is always whole.

    Example:
        >>> with JsonLinesSink("frames.jsonl") as sink:  # doctest: +SKIP
        ...     for outcome in predictor.stream("video.mp4"):
        ...         sink.add(outcome)
    """

    #: (lines, byte offset) marks kept for checkpoints: an interrupt lands at most an item or two past the end
    MARKS_KEPT = 8

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        make_dirs(self.path.parent)
        self._f: Any = None
        self.lines = 0
        self._end = 0  # bytes of whole lines
        self._marks: collections.deque[tuple[int, int]] = collections.deque([(0, 0)], maxlen=self.MARKS_KEPT)
        self._cut: int | None = None
        self._fresh = True  # opened at the first write or close ("wb"), or by restore() ("r+b")

    def _open(self, mode: str) -> None:
        try:
            self._f = open(self.path, mode + "b")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise output_error(self.path, e) from None

    def add(self, outcome: Any) -> None:
        """Write one outcome as a line: its result, or its error."""
        item, result = outcome.item, outcome.result
        rec: dict[str, Any] = {"index": int(item.index), "name": item.name}
        if getattr(item, "frame", None) is not None:
            rec["frame"] = int(item.frame)
        if outcome.error is not None:
            rec["error"] = str(outcome.error)
        elif isinstance(result, Detections):
            rec["image_shape"] = list(result.image_shape) if result.image_shape else None
            rec["detections"] = result.to_dicts()
        elif result is not None:
            rec["classes"] = result.to_dicts()
        self.write(rec)

    def write(self, record: dict) -> None:
        """Append one JSON-serialisable record as a line (flushed).

        Raises:
            OutputError: the line could not be written; the file is cut back to its last whole line.
        """
        data = (json.dumps(record) + "\n").encode("utf-8")
        try:
            self._start()
            self._f.write(data)
            self._f.flush()
        except OSError as e:
            self._truncate(self._end)
            raise output_error(self.path, e) from None
        self._end += len(data)
        self.lines += 1
        self._marks.append((self.lines, self._end))

    def _start(self) -> None:
        """A fresh run: create the file, emptying one an earlier run left (once, at the first write or close)."""
        if self._fresh:
            self._fresh = False
            self._open("w")

    def _truncate(self, size: int) -> None:
        """Drop unflushed bytes and cut the file to ``size`` bytes; then close it."""
        f, self._f = self._f, None
        if f is None or f.closed:
            return
        try:
            os.ftruncate(f.fileno(), size)
        except OSError:
            pass
        try:
            f.close()
        except OSError:  # buffered bytes that cannot be flushed (a full disk): cut again below
            pass
        try:
            if self.path.stat().st_size > size:
                os.truncate(self.path, size)
        except OSError:
            pass

    def close(self) -> None:
        """Close the file."""
        try:
            self._start()
            if self._f is None or self._f.closed:
                return
            self._f.close()
        except OSError as e:
            self._truncate(self._end)
            raise output_error(self.path, e) from None

    def checkpoint(self, upto: int) -> dict[str, Any]:
        """The file's length in lines and bytes once it covers the items before ``upto`` (one line per item;
        a line written past them is cut by :meth:`abort`)."""
        lines, end = next(((n, e) for n, e in reversed(self._marks) if n <= upto), self._marks[0])
        self._cut = end
        return {"lines": lines, "bytes": end}

    def restore(self, state: dict[str, Any], upto: int) -> None:
        """Continue the file of an interrupted run: cut it to the checkpoint's length, append from there.

        Raises:
            InputError: the file is shorter than the checkpoint says, or its line count differs (changed since).
        """
        lines, size = int(state["lines"]), int(state["bytes"])
        if self._f is not None and not self._f.closed:
            self._f.close()
        try:
            with open(self.path, "rb") as f:
                head = f.read(size)
        except OSError:
            head = b""
        if len(head) != size or head.count(b"\n") != lines:
            raise InputError(f"{self.path}: expected the {lines} line(s) of the interrupted run to resume, the file "
                             "holds something else; rerun without --resume to start again")
        self._open("r+")
        self._fresh = False
        self._f.truncate(size)
        self._f.seek(size)
        self.lines, self._end = lines, size
        self._marks.clear()
        self._marks.append((lines, size))

    def abort(self) -> None:
        """The run stopped early: cut the file to the items done (the last checkpoint, else its whole lines)."""
        self._truncate(self._end if self._cut is None else self._cut)
