"""Sinks: where results go. COCO results JSON, YOLO txt labels, annotated images.

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a half-written file and never clobbers a good one with a bad one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .results import Classifications, Detections


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
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
        }
        for box, s, c in zip(det.xywh, det.confidence, det.class_id)
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
    out = img.copy()
    lw = max(1, round(sum(out.shape[:2]) / 2 * 0.003))
    for (x1, y1, x2, y2), s, c, name in zip(det.xyxy, det.confidence, det.class_id, det.class_names):
        col = _colour(int(c))
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, col, lw, cv2.LINE_AA)
        label = f"{name} {s:.2f}"
        fs = max(lw / 3, 0.4)
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, fs, max(lw - 1, 1))
        y = p1[1] - th - 3 if p1[1] - th - 3 >= 0 else p1[1] + th + 3
        cv2.rectangle(out, (p1[0], y), (p1[0] + tw, y + th + 3) if y > p1[1] else (p1[0] + tw, p1[1]), col, -1)
        cv2.putText(out, label, (p1[0], (y + th + 1) if y > p1[1] else p1[1] - 2), cv2.FONT_HERSHEY_SIMPLEX, fs,
                    (255, 255, 255), max(lw - 1, 1), cv2.LINE_AA)
    return out


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Encode ``img`` by the path's suffix and write it atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".jpg", img)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {path.suffix}")
    atomic_write_bytes(path, buf.tobytes())


class Sinks:
    """The outputs of one predict run: COCO JSON, YOLO txt folder, annotated-image folder (each optional)."""

    def __init__(self, save_json: str | None = None, save_txt: str | None = None, save_img: str | None = None):
        self.json_path = Path(save_json) if save_json else None
        self.txt_dir = Path(save_txt) if save_txt else None
        self.img_dir = Path(save_img) if save_img else None
        self.records: list[dict] = []
        for d in (self.txt_dir, self.img_dir):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)

    @property
    def wants_image(self) -> bool:
        return self.img_dir is not None

    def add(self, name: str, index: int, det: Detections | Classifications, image: np.ndarray | None = None) -> None:
        """Record one image's result. Classifications go to JSON as top-k records
        (``{"image_id", "file_name", "class_id", "name", "score"}``), to txt as ``class score`` lines, and are
        drawn as a label."""
        stem = Path(name.replace("#", "_")).stem
        cls = isinstance(det, Classifications)
        if self.json_path is not None:
            self.records.extend(classification_records(det, index + 1, name) if cls else coco_records(det, index + 1, name))
        if self.txt_dir is not None:
            text = "".join(f"{int(c)} {float(p):.5f}\n" for c, p in zip(det.class_id, det.confidence)) if cls else yolo_txt(det)
            atomic_write_text(self.txt_dir / f"{stem}.txt", text)
        if self.img_dir is not None and image is not None:
            suffix = Path(name).suffix.lower()
            suffix = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
            drawn = draw_classification(image, det) if cls else draw_detections(image, det)
            write_image(self.img_dir / f"{stem}{suffix}", drawn)

    def close(self) -> None:
        if self.json_path is not None:
            atomic_write_json(self.json_path, self.records)


class VideoSink:
    """Annotated frames -> one video file (``.mp4`` as mp4v, ``.avi`` as MJPG), written atomically on close.

    The writer opens on the first frame (its size fixes the video's); later frames of another size are resized.

    Example:
        >>> sink = VideoSink("out.mp4", fps=25)  # doctest: +SKIP
        >>> sink.write(frame); sink.close()  # doctest: +SKIP
    """

    FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}

    def __init__(self, path: str | os.PathLike, fps: float = 25.0) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in self.FOURCC:
            from .errors import InputError

            raise InputError(f"{self.path}: expected a video file name ending in {', '.join(self.FOURCC)}, "
                             f"got {self.path.suffix or 'no suffix'!r}")
        self.fps = float(fps)
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise OSError(f"OpenCV could not open a video writer for {self.path}")
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_LINEAR)
        self._writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self._tmp, self.path)


class JsonLinesSink:
    """One JSON object per line and per item (frame or image), flushed as it goes so a live stream can be tailed.

    Lines: ``{"index", "name", "frame", "image_shape", "detections": [...]}`` or ``{"index", "name", "error"}``.
    Unlike the other sinks this file grows while the run goes on (not atomic), which is what a stream needs.

    Example:
        >>> with JsonLinesSink("frames.jsonl") as sink:  # doctest: +SKIP
        ...     sink.add("video.mp4#000000", 0, dets, frame=0)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")
        self.lines = 0

    def add(self, name: str, index: int, result: Any = None, *, frame: int | None = None,
            error: str | None = None) -> None:
        rec: dict[str, Any] = {"index": int(index), "name": name}
        if frame is not None:
            rec["frame"] = int(frame)
        if error is not None:
            rec["error"] = error
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
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> JsonLinesSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
