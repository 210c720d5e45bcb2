"""Sinks: where results go. COCO results JSON, YOLO txt labels, annotated images, an annotated video, JSON lines.

Every sink has one protocol (:class:`Sink`): ``add(outcome)`` for each item of a stream (an
:class:`~unideploy.core.sources.Outcome`: the item, its result or its error, and the decoded image when the
stream kept it) and ``close()`` once at the end; each is a context manager. The CLI and the library
(:func:`unideploy.predict`) build the same sinks.

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a half-written file and never clobbers a good one with a bad one. The JSON-lines
file is the exception on purpose: it grows line by line so that a live stream can be tailed.

Example:
    >>> with Sinks.from_paths(save_json="preds.json", save_txt="labels/") as sinks:  # doctest: +SKIP
    ...     for outcome in predictor.stream("images/", keep_images=sinks.wants_image):
    ...         sinks.add(outcome)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from unideploy.core.results import Classifications, Detections, OrientedDetections
from unideploy.core.task_io import draw_task, task_coco_fields, task_txt_lines

__all__ = [
    "Sink", "BaseSink", "Sinks", "CocoJsonSink", "YoloTxtSink", "ImageSink", "VideoSink", "JsonLinesSink",
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "coco_records", "classification_records",
    "yolo_txt", "draw_detections", "draw_classification", "draw_result", "write_image",
]


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (creating parent folders), with the mode the umask gives an ordinary
    new file (0644 under umask 022), not the temporary file's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # POSIX
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


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


def draw_classification(img: np.ndarray, res: Classifications, k: int = 3) -> np.ndarray:
    """A copy of ``img`` with the top-``k`` classes written in the top-left corner."""
    out = img.copy()
    fs = max(0.4, min(out.shape[:2]) / 600)
    for i, (p, n) in enumerate(zip(res.confidence[:k], res.class_names[:k])):
        y = int((i + 1) * 28 * fs) + 4
        cv2.putText(out, f"{n} {p:.2f}", (6, y), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, f"{n} {p:.2f}", (6, y), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1, cv2.LINE_AA)
    return out


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


def _colour(k: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(k * 7919 + 17)
    return tuple(int(v) for v in rng.integers(60, 255, 3))  # type: ignore[return-value]


def draw_detections(img: np.ndarray, det: Detections) -> np.ndarray:
    """A copy of ``img`` (BGR) with boxes, class names and scores drawn."""
    out = draw_task(img.copy(), det, _colour)  # masks, keypoints, rotated boxes
    lw = max(1, round(sum(out.shape[:2]) / 2 * 0.003))
    for (x1, y1, x2, y2), s, c, name in zip(det.xyxy, det.confidence, det.class_id, det.class_names):
        col = _colour(int(c))
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        if not isinstance(det, OrientedDetections):
            cv2.rectangle(out, p1, p2, col, lw, cv2.LINE_AA)
        label = f"{name} {s:.2f}"
        fs = max(lw / 3, 0.4)
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, fs, max(lw - 1, 1))
        y = p1[1] - th - 3 if p1[1] - th - 3 >= 0 else p1[1] + th + 3
        cv2.rectangle(out, (p1[0], y), (p1[0] + tw, y + th + 3) if y > p1[1] else (p1[0] + tw, p1[1]), col, -1)
        cv2.putText(out, label, (p1[0], (y + th + 1) if y > p1[1] else p1[1] - 2), cv2.FONT_HERSHEY_SIMPLEX, fs,
                    (255, 255, 255), max(lw - 1, 1), cv2.LINE_AA)
    return out


def draw_result(img: np.ndarray, result: Detections | Classifications) -> np.ndarray:
    """A copy of ``img`` with ``result`` drawn: boxes for detections, the top classes for a classification."""
    return draw_classification(img, result) if isinstance(result, Classifications) else draw_detections(img, result)


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Encode ``img`` by the path's suffix and write it atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".jpg", img)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {path.suffix}")
    atomic_write_bytes(path, buf.tobytes())


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


class YoloTxtSink(BaseSink):
    """One YOLO label file per image in a folder: ``class cx cy w h conf`` lines (normalised), or ``class score``
    lines for a classification. The folder is created at once."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder)
        self.path.mkdir(parents=True, exist_ok=True)

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
        self.path = Path(folder)
        self.path.mkdir(parents=True, exist_ok=True)

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


class VideoSink(BaseSink):
    """Annotated frames -> one video file (``.mp4`` as mp4v, ``.avi`` as MJPG), written atomically on close.

    The writer opens on the first frame (its size fixes the video's); later frames of another size are resized.
    ``fps`` None means the source's frame rate divided by the frame stride, which :func:`unideploy.predict` sets
    before the first frame (25 when nothing sets it).

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
            from unideploy.core.errors import InputError

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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps or 25.0, self._size)
            if not self._writer.isOpened():
                raise OSError(f"OpenCV could not open a video writer for {self.path}")
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_LINEAR)
        self._writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it into place (nothing is written when no frame came)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self._tmp, self.path)


class JsonLinesSink(BaseSink):
    """One JSON object per line and per item (frame or image), flushed as it goes so a live stream can be tailed.

    Lines: ``{"index", "name", "frame", "image_shape", "detections": [...]}``, ``{"index", "name", "classes": [...]}``
    or ``{"index", "name", "error"}``. Unlike the other sinks this file grows while the run goes on (not atomic),
    which is what a stream needs.

    Example:
        >>> with JsonLinesSink("frames.jsonl") as sink:  # doctest: +SKIP
        ...     for outcome in predictor.stream("video.mp4"):
        ...         sink.add(outcome)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.lines = 0

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
        """Append one JSON-serialisable record as a line (flushed)."""
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        self.lines += 1

    def close(self) -> None:
        """Close the file."""
        if not self._f.closed:
            self._f.close()
