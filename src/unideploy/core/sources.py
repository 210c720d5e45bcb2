"""Sources: images, folders, globs and video files -> decoded BGR uint8 images.

Decoding follows Ultralytics (``cv2.imdecode(np.fromfile(path), IMREAD_COLOR)``: all eight EXIF orientations
applied, grayscale / grayscale+alpha / palette expanded to 3 channels, alpha dropped (not composited), 16-bit
reduced to 8-bit by keeping the high byte). Before OpenCV sees a byte, the header is checked: only the formats
in :data:`ALLOWED_FORMATS` are decoded (recognised by magic bytes, not by file name), and images above
:data:`MAX_PIXELS` are refused from their declared size. Every failure is an :class:`ImageDecodeError` with the
reason, so a batch job can skip the file and report it.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from unideploy.core.errors import ImageDecodeError, SourceError, UnideployError
from unideploy.core.ops.letterbox_scaled import REDUCED_FLAGS, ScaledImage, full_shape_of
from unideploy.core.security import IMAGE_FORMATS, sniff_image

__all__ = [
    "ALLOWED_FORMATS", "IMAGE_SUFFIXES", "MAX_PIXELS", "VIDEO_SUFFIXES", "Item", "Outcome", "Source", "VideoStats",
    "decode_image", "is_stream_url", "iter_video", "list_images", "read_image",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".dng", ".mpo", ".pfm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpeg", ".mpg", ".wmv", ".webm", ".gif", ".asf", ".ts")
#: images larger than this many pixels are refused from their header, before decoding (decompression bombs);
#: set it here, per call (``max_pixels=``) or with the environment variable UNIDEPLOY_MAX_PIXELS; 0 = no limit
MAX_PIXELS = int(os.environ.get("UNIDEPLOY_MAX_PIXELS") or 100_000_000)
#: encoded formats handed to OpenCV (by magic bytes); others (GIF, PNM, HDR, EXR, JPEG 2000 ...) are refused unread
ALLOWED_FORMATS: tuple[str, ...] = IMAGE_FORMATS


@dataclass
class Item:
    """One unit of work from a source: a name for reports and sinks, and a way to get its pixels."""

    name: str
    index: int  # 0-based position in the source
    load: Callable[[], np.ndarray]
    path: Path | None = None
    frame: int | None = None


@dataclass
class Outcome:
    """What happened to one item of a source: its result, or the error that made it skip.

    Predictors yield these from ``stream``; sinks take them (:meth:`unideploy.core.sinks.Sink.add`).

    Example:
        >>> out = Outcome(Item("a.jpg", 0, lambda: None), result=None, error=SourceError("a.jpg: unreadable"))
        >>> out.ok
        False
    """

    item: Item
    result: Any = None
    error: UnideployError | None = None
    image: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        """True when the item has a result (no error)."""
        return self.error is None


def _jpeg_truncated(data: np.ndarray) -> bool:
    tail = data[-4096:].tobytes().rstrip(b"\x00\r\n ")
    return b"\xff\xd9" not in tail[-4096:]


def decode_image(data: np.ndarray | bytes, name: str = "<bytes>", *, max_pixels: int | None = None,
                 formats: tuple[str, ...] | None = None,
                 decode_scale: Callable[[int, int], int] | None = None) -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 HWC array.

    The format is recognised from the magic bytes and must be in ``formats`` (default :data:`ALLOWED_FORMATS`);
    the size is read from the header and must be at most ``max_pixels`` (default :data:`MAX_PIXELS`; 0 = no
    limit) before anything is decoded. ``decode_scale(height, width)`` (fast decode) picks a JPEG DCT scale
    1, 2, 4 or 8 from the header's size; a JPEG is then decoded at that scale as a
    :class:`~unideploy.core.ops.letterbox_scaled.ScaledImage` that remembers its full size.

    Raises:
        ImageDecodeError: empty, truncated, too large, of a format outside the allow-list, or not decodable.

    Example:
        >>> import cv2, numpy as np
        >>> ok, enc = cv2.imencode(".png", np.zeros((4, 6), np.uint8))
        >>> decode_image(enc.tobytes()).shape
        (4, 6, 3)
    """
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise ImageDecodeError(f"{name}: expected an image, got an empty file")
    header = sniff_image(buf, name)
    allowed = ALLOWED_FORMATS if formats is None else tuple(formats)
    if header.format not in allowed:
        raise ImageDecodeError(f"{name}: {header.format.upper()} images are not in the allowed formats ({', '.join(allowed)})")
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit and header.pixels > limit:
        raise ImageDecodeError(
            f"{name}: image is {header.width}x{header.height} ({header.pixels / 1e6:.1f} megapixels), above the limit "
            f"of {limit / 1e6:g} megapixels (raise it with max_pixels= or UNIDEPLOY_MAX_PIXELS)")
    if header.format == "jpeg" and _jpeg_truncated(buf):
        raise ImageDecodeError(f"{name}: expected a complete JPEG, got a truncated one (no end-of-image marker)")
    # 16-bit TIFF: take the high byte of each sample, as Ultralytics does (IMREAD_COLOR alone rounds instead)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH if header.format == "tiff" and header.bits == 16 else cv2.IMREAD_COLOR
    factor = decode_scale(header.height, header.width) if decode_scale and header.format == "jpeg" else 1
    try:
        img = cv2.imdecode(buf, REDUCED_FLAGS[factor] if factor in REDUCED_FLAGS else flags)
        if factor in REDUCED_FLAGS and img is not None:
            full = full_shape_of(img.shape, header.height, header.width, factor)
            img = ScaledImage.wrap(img, full, factor) if full else cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise ImageDecodeError(f"{name}: OpenCV could not decode this {header.format.upper()} file ({str(e).strip().splitlines()[-1]})") from None
    if img is None:
        raise ImageDecodeError(f"{name}: expected a decodable {header.format.upper()} image, got data OpenCV cannot decode")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"{name}: expected 8- or 16-bit samples, got {img.dtype} (floating-point images are not supported)")
    if limit and img.shape[0] * img.shape[1] > limit:  # a header that understated the size
        raise ImageDecodeError(f"{name}: image has {img.shape[1]}x{img.shape[0]} pixels, above the limit of {limit}")
    return img


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None,
               decode_scale: Callable[[int, int], int] | None = None) -> np.ndarray:
    """Read one image file as BGR uint8 (H, W, 3); see :func:`decode_image` for the checks and ``decode_scale``.

    Raises:
        ImageDecodeError: missing, unreadable, empty, truncated, too large or not an allowed image format.

    Example:
        >>> img = read_image("bus.jpg")  # doctest: +SKIP
    """
    p = Path(path)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        size = p.stat().st_size
        if limit and size > 8 * limit + (1 << 26):  # more bytes than an uncompressed 16-bit RGBA image of `limit` pixels
            raise ImageDecodeError(f"{p}: file of {size} bytes is larger than any image within the limit of "
                                   f"{limit / 1e6:g} megapixels could be")
        data = np.fromfile(p, np.uint8)
    except FileNotFoundError:
        raise ImageDecodeError(f"{p}: expected an image file, but it does not exist") from None
    except (PermissionError, IsADirectoryError, OSError) as e:
        raise ImageDecodeError(f"{p}: expected a readable image file, got {type(e).__name__}: {e.strerror or e}") from None
    return decode_image(data, str(p), max_pixels=max_pixels, decode_scale=decode_scale)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _is_video(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_SUFFIXES


def list_images(source: str | os.PathLike) -> list[Path]:
    """Image files named by ``source`` (a file, a folder or a glob), sorted by name.

    Raises:
        SourceError: nothing matches.
    """
    s = str(source)
    p = Path(s)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and _is_image(f))
        if not files:
            raise SourceError(f"{p}: expected a folder of images ({', '.join(IMAGE_SUFFIXES)}), found none")
        return files
    if p.is_file():
        return [p]
    if any(ch in s for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(s, recursive=True) if Path(f).is_file() and _is_image(Path(f)))
        if not files:
            raise SourceError(f"glob {s!r}: expected it to match image files, it matched none")
        return files
    raise SourceError(f"{s}: expected an image, a folder, a glob or a video file; no such file or folder")


@dataclass
class VideoStats:
    """What reading a video or stream met: frames decoded, frames skipped as unreadable, and an early end.

    ``expected`` is the frame count the container declares (None for live streams or when unknown);
    ``ended_early`` is True when the stream stopped before that count (a truncated file, a dropped connection).
    """

    decoded: int = 0
    skipped: int = 0
    expected: int | None = None
    last_frame: int = -1
    ended_early: bool = False
    fps: float = 25.0  # as declared by the container (25 when it declares nothing usable)
    #: wall time spent reading and decoding frames (failed reads included); a timing, left out of ==
    decode_seconds: float = field(default=0.0, compare=False)

    def describe(self) -> str:
        """One line for reports, e.g. ``"120 frame(s) decoded, 2 corrupt frame(s) skipped"``."""
        text = f"{self.decoded} frame(s) decoded, {self.skipped} corrupt or dropped frame(s) skipped"
        if self.ended_early:
            text += f"; the stream ended early after frame {self.last_frame + 1} of {self.expected or '?'} expected"
        return text


#: consecutive failed reads after which a video / stream is taken to have ended
MAX_READ_FAILURES = 8


def iter_video(path: Path | str, vid_stride: int = 1, start_index: int = 0,
               stats: VideoStats | None = None) -> Iterator[Item]:
    """Frames of a video file or stream URL as items (decoded eagerly: a capture cannot seek cheaply).

    A frame that fails to decode is skipped and counted in ``stats``; reading stops at the declared end, or
    after ``MAX_READ_FAILURES`` consecutive failures (``stats.ended_early`` tells whether frames were missing).
    """
    stats = stats if stats is not None else VideoStats()
    label = Path(path).name if isinstance(path, Path) else str(path).rstrip("/").rsplit("/", 1)[-1] or str(path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"{path}: expected a video or stream OpenCV can open, it could not open it")
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        stats.expected = n if n > 0 else None
        fps = cap.get(cv2.CAP_PROP_FPS)
        stats.fps = float(fps) if fps and 0 < fps < 1000 else 25.0
        idx = start_index
        failures = 0
        while True:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            stats.decode_seconds += time.perf_counter() - t0
            if not ok or frame is None:
                if stats.expected is not None and stats.last_frame + 1 >= stats.expected:
                    break  # the declared end
                failures += 1  # a corrupt frame (a later read succeeds) or the end of a cut stream (none does)
                if failures >= MAX_READ_FAILURES:
                    stats.ended_early = stats.expected is not None
                    break
                continue
            frame_no = stats.last_frame + 1 + failures  # each failed read that a good one follows lost one frame
            stats.skipped += failures
            failures = 0
            stats.last_frame = frame_no
            stats.decoded += 1
            if frame_no % vid_stride == 0:
                yield Item(f"{label}#{frame_no:06d}", idx, (lambda f=frame: f), Path(path) if isinstance(path, Path) else None,
                           frame_no)
                idx += 1
    finally:
        cap.release()


def is_stream_url(source: object) -> bool:
    """True for capture URLs OpenCV opens as streams (rtsp://, rtmp://, http(s):// without an image suffix)."""
    s = str(source).lower()
    return s.startswith(("rtsp://", "rtmp://", "rtsps://", "udp://", "tcp://")) or (
        s.startswith(("http://", "https://")) and not s.split("?")[0].endswith(IMAGE_SUFFIXES))


class Source:
    """A resolved source: an image, folder, glob, video file, or a list of paths / arrays.

    Resolution happens in the constructor, so a source that names nothing fails before any work.

    Raises:
        SourceError: the source names nothing usable.

    Example:
        >>> src = Source("images/")  # doctest: +SKIP
        >>> len(src), [item.name for item in src][:2]  # doctest: +SKIP
    """

    def __init__(self, source: str | os.PathLike | list | tuple, vid_stride: int = 1) -> None:
        self.vid_stride = max(1, int(vid_stride))
        self.video: Path | str | None = None
        self.entries: list = []
        #: reading statistics of the last pass over a video or stream (None for images)
        self.stats: VideoStats | None = None
        #: items before this 0-based index are not yielded (a resumed run); indices and frame numbers stay the same
        self.start = 0
        #: fast decode: (height, width) -> JPEG DCT scale for image files (see :func:`decode_image`); None: full size
        self.decode_scale: Callable[[int, int], int] | None = None
        if isinstance(source, (list, tuple)):
            self.entries = list(source)
            return
        if is_stream_url(source):
            self.video = str(source)
            return
        p = Path(str(source))
        if p.is_file() and _is_video(p):
            self.video = p
        else:
            self.entries = list_images(source)

    def __len__(self) -> int:
        if self.video is None:
            return len(self.entries)
        if isinstance(self.video, str):
            return 0  # a live stream has no length
        cap = cv2.VideoCapture(str(self.video))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        return max(0, -(-n // self.vid_stride))  # an estimate: containers may lie; 0 for live streams

    @property
    def is_video(self) -> bool:
        return self.video is not None

    def __iter__(self) -> Iterator[Item]:
        if self.video is not None:
            self.stats = VideoStats()
            for item in iter_video(self.video, self.vid_stride, stats=self.stats):
                if item.index >= self.start:
                    yield item
            return
        for i, obj in enumerate(self.entries):
            if i < self.start:
                continue
            if isinstance(obj, np.ndarray):
                yield Item(f"image{i}", i, (lambda a=obj: a))
            else:
                path = Path(obj)
                yield Item(path.name, i, (lambda q=path, f=self.decode_scale: read_image(q, decode_scale=f)), path)
