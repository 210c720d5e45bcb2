"""Live sources: network streams read on their own thread, with reconnection and a frame-drop policy.

A live stream (RTSP, HTTP MJPEG, UDP, ... through OpenCV's FFmpeg backend) does not wait for the consumer. The
reader thread takes frames as they come; the ``policy`` says what happens when inference is slower than the
stream: ``"latest"`` keeps only the newest frame (older ones are dropped and counted), ``"every"`` queues frames in a
bounded buffer and makes the reader wait (nothing dropped here; the sender's buffers absorb the delay).

When reading fails the stream is reopened with exponential backoff (``reconnect`` attempts, waits ``backoff``,
2x ``backoff``, ... up to ``backoff_max`` seconds). A read that returns nothing within ``read_timeout`` is a *stall*;
a read that fails at once is an *end* (the server closed the connection or the stream ended). Either way the
reason, the frames read and the reconnections are kept in :class:`StreamStats`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from unideploy.core.errors import OptionError, SourceError
from unideploy.core.options import check_non_negative_int, check_positive_int
from unideploy.core.sources import Item, Source, VideoStats

__all__ = ["DROP_POLICIES", "LiveSource", "StreamOptions", "StreamStats", "open_capture"]

DROP_POLICIES = ("latest", "every")


@dataclass(frozen=True)
class StreamOptions:
    """How a live stream is read.

    Args:
        policy: "latest" (drop frames the consumer is too slow for) or "every" (bounded queue, no drops).
        reconnect: reopen attempts after the stream fails (0: end at the first failure).
        backoff: seconds before the first reopen attempt; doubled each attempt up to ``backoff_max``.
        backoff_max: longest wait between attempts.
        open_timeout: seconds to wait for the stream to open.
        read_timeout: seconds without a frame after which the stream counts as stalled.
        buffer: frames queued under the "every" policy.
    """

    policy: str = "latest"
    reconnect: int = 5
    backoff: float = 0.5
    backoff_max: float = 8.0
    open_timeout: float = 10.0
    read_timeout: float = 5.0
    buffer: int = 8

    def __post_init__(self) -> None:
        if self.policy not in DROP_POLICIES:
            raise OptionError("policy", f"must be one of {', '.join(DROP_POLICIES)}, got {self.policy!r}")
        object.__setattr__(self, "reconnect", check_non_negative_int(self.reconnect, "reconnect"))
        object.__setattr__(self, "buffer", check_positive_int(self.buffer, "buffer"))
        for name in ("backoff", "backoff_max", "open_timeout", "read_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise OptionError(name, f"must be a positive number of seconds, got {v!r}")


@dataclass
class StreamStats(VideoStats):
    """:class:`VideoStats` of a live stream, plus frames dropped by the policy, reconnections and how it ended."""

    dropped: int = 0
    reconnects: int = 0
    end: str = ""

    def describe(self) -> str:
        text = f"{self.decoded} frame(s) read, {self.dropped} dropped (consumer slower than the stream)"
        if self.reconnects:
            text += f", {self.reconnects} reconnection(s)"
        return text + (f"; {self.end}" if self.end else "")


def open_capture(url: str, options: StreamOptions) -> Any:
    """``cv2.VideoCapture`` of ``url`` with FFmpeg's open and read timeouts set; None when it does not open."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(options.open_timeout * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(options.read_timeout * 1000)]
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        return None
    return cap


class LiveSource(Source):
    """A stream URL as a :class:`Source` read by a background thread (see the module's description).

    Args:
        url: the stream (rtsp://, http://, udp://, ...).
        options: a :class:`StreamOptions` (default: latest-frame policy, 5 reconnect attempts).
        vid_stride: use every N-th frame read.
        opener: ``(url, options) -> capture or None`` (default :func:`open_capture`); tests inject others.

    Raises:
        SourceError: (when iterated) the stream cannot be opened at all.

    Example:
        >>> src = LiveSource("rtsp://camera/stream", StreamOptions(policy="every"))  # doctest: +SKIP
        >>> for out in predictor.stream(src): ...  # doctest: +SKIP
    """

    def __init__(self, url: str, options: StreamOptions | None = None, vid_stride: int = 1,
                 opener: Callable[[str, StreamOptions], Any] | None = None) -> None:
        super().__init__([], vid_stride)
        self.video = str(url)
        self.options = options or StreamOptions()
        self.opener = opener or open_capture
        self.stats: StreamStats | None = None

    def __len__(self) -> int:
        return 0  # a live stream has no length

    def __iter__(self) -> Iterator[Item]:
        opts, url = self.options, str(self.video)
        stats = self.stats = StreamStats(fps=25.0)
        cap = self.opener(url, opts)
        if cap is None:
            raise SourceError(f"{url}: expected a stream OpenCV can open, it could not open it "
                              f"(within {opts.open_timeout:g} s)")
        fps = cap.get(cv2.CAP_PROP_FPS)
        stats.fps = float(fps) if fps and 0 < fps < 1000 else 25.0
        label = url.rstrip("/").rsplit("/", 1)[-1] or url
        frames: queue.Queue = queue.Queue(maxsize=opts.buffer if opts.policy == "every" else 1)
        stop = threading.Event()
        done = object()
        reader = threading.Thread(target=self._read, args=(cap, url, frames, stop, done), daemon=True,
                                  name="unideploy-live-source")
        reader.start()
        index = 0
        try:
            while True:
                entry = frames.get()
                if entry is done:
                    return
                frame_no, frame = entry
                yield Item(f"{label}#{frame_no:06d}", index, (lambda f=frame: f), None, frame_no)
                index += 1
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    frames.get_nowait()
                except queue.Empty:
                    pass
                reader.join(timeout=0.05)

    def _read(self, cap: Any, url: str, frames: queue.Queue, stop: threading.Event, done: object) -> None:
        opts, stats = self.options, self.stats
        assert stats is not None
        failures = 0
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                ok, frame = cap.read() if cap is not None else (False, None)
                if ok and frame is not None:
                    failures = 0
                    stats.decoded += 1
                    stats.last_frame += 1
                    if stats.last_frame % self.vid_stride == 0:
                        self._deliver(frames, (stats.last_frame, np.ascontiguousarray(frame)), stop)
                    continue
                stalled = cap is not None and time.monotonic() - t0 >= 0.9 * opts.read_timeout
                why = "stalled (no frame for {:g} s)".format(opts.read_timeout) if stalled else "ended"
                if cap is not None:
                    cap.release()
                    cap = None
                if failures >= opts.reconnect:
                    stats.ended_early = failures > 0 or stats.reconnects > 0 or stalled
                    stats.end = (f"the stream {why} after {stats.decoded} frame(s)"
                                 + (f"; {failures} reconnect attempt(s) failed" if failures else ""))
                    return
                if stop.wait(min(opts.backoff * 2 ** failures, opts.backoff_max)):
                    return
                failures += 1
                cap = self.opener(url, opts)
                if cap is not None:
                    stats.reconnects += 1
                    failures = 0
        finally:
            if cap is not None:
                cap.release()
            self._deliver(frames, done, stop, final=True)

    def _deliver(self, frames: queue.Queue, entry: Any, stop: threading.Event, final: bool = False) -> None:
        assert self.stats is not None
        if self.options.policy == "latest" and not final:
            try:
                frames.get_nowait()  # the consumer has not taken the previous frame: drop it
                self.stats.dropped += 1
            except queue.Empty:
                pass
            frames.put(entry)
            return
        while not stop.is_set():
            try:
                frames.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue
        if final:  # the consumer stopped: make room so that it (if still waiting) sees the end
            try:
                frames.get_nowait()
            except queue.Empty:
                pass
            frames.put_nowait(entry)
