"""Streaming tracking endpoint on Ray Serve: a video in, one JSON line per tracked frame out, as it is tracked.

``serve_model`` deploys it beside the detection endpoint (its own application, ``route_prefix="/track"``):

* ``POST /track`` with the video file as the body (``video/*`` or ``application/octet-stream``; no multipart:
  a video is one file); query ``tracker=bytetrack|botsort`` (default bytetrack) and ``conf``.
  Reply: ``application/x-ndjson``, streamed: ``{"frame": 1, "detections": [{"xyxy", "confidence", "class_id",
  "name", "tracker_id"}, ...]}`` per frame (1-based), then ``{"summary": {"frames", "failed", "tracks", "seconds",
  "tracker"}}`` (``failed``: frames that could not be decoded). An error after the stream started is a last line
  ``{"error": "..."}``.
* ``GET /track``: the trackers, the upload limit and the model.

Before the stream starts, bad input is a 4xx with ``{"error": "<one line>"}``: 413 for a body over the limit,
415 for another content type, 400 for an empty body, a file that is not a video with frames, or a bad tracker name
or ``conf``. Each request gets its own tracker (identities start at 1); a replica tracks one video at a time
(``max_ongoing_requests=1``), so more replicas track more videos at once. Why no live-stream URL input: a server
that opens URLs its clients name can be made to reach hosts the clients cannot (request forgery); a client with a
camera sends its recording in pieces, or runs ``unideploy track`` next to the camera.

Example:
    >>> from ray import serve
    >>> serve.run(build_track_app("model.onnx"), name="unideploy-track", route_prefix="/track")  # doctest: +SKIP
    $ curl --data-binary @clip.mp4 -H 'Content-Type: video/mp4' 'http://127.0.0.1:8000/track?tracker=botsort'
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unideploy.core.errors import RequestError, UnideployError

__all__ = ["DEFAULT_MAX_VIDEO_MB", "build_track_app", "track_kwargs", "track_lines", "video_from_upload"]

DEFAULT_MAX_VIDEO_MB = 200.0


def video_from_upload(content_type: str, body: bytes) -> bytes:
    """The video bytes of a request body (the body itself).

    Raises:
        RequestError: 400 (an empty body), 415 (a content type other than video/* or application/octet-stream).

    Example:
        >>> video_from_upload("video/mp4", b"...")
        b'...'
    """
    ctype = content_type.split(";")[0].strip().lower()
    if not (ctype.startswith("video/") or ctype in ("application/octet-stream", "")):
        raise RequestError(415, f"expected a video body (video/* or application/octet-stream), got {ctype!r}")
    if not body:
        raise RequestError(400, "expected a video in the request body, got an empty body")
    return body


def track_lines(predictor: Any, video: str | os.PathLike, tracker: str = "bytetrack",
                conf: float | None = None) -> Iterator[bytes]:
    """Track ``video`` with an open predictor: one NDJSON line per frame, then a summary line (an error line last
    if tracking fails part-way).

    Example:
        >>> for line in track_lines(predictor, "clip.mp4", "botsort"):  # doctest: +SKIP
        ...     print(json.loads(line))
    """
    ids: set[int] = set()
    frames, failed, t0 = 0, 0, time.perf_counter()
    try:
        for out in predictor.track(str(video), tracker, conf=conf):
            if not out.ok:
                failed += 1
                continue
            frames += 1
            ids.update(out.result.tracker_id.tolist())
            frame = (out.item.frame if out.item.frame is not None else out.item.index) + 1
            yield (json.dumps({"frame": frame, "detections": out.result.to_dicts()}) + "\n").encode()
    except UnideployError as e:
        yield (json.dumps({"error": str(e)}) + "\n").encode()
        return
    summary = {"frames": frames, "failed": failed, "tracks": len(ids), "seconds": round(time.perf_counter() - t0, 3),
               "tracker": tracker}
    yield (json.dumps({"summary": summary}) + "\n").encode()


def _check_video(path: Path) -> None:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        ok = cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    if not ok:
        raise RequestError(400, "expected a video with frames (a container OpenCV's FFmpeg reads), got none")


def track_kwargs(serve_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The model-loading part of ``serve_model``'s keyword arguments (the detection endpoint's limits left out)."""
    keep = ("backend", "device", "threads", "sha256", "precision", "trust_pickle", "imgsz", "family", "iou", "max_det",
            "backend_options")
    return {k: v for k, v in serve_kwargs.items() if k in keep}


def build_track_app(model: str | os.PathLike, *, max_upload_mb: float = DEFAULT_MAX_VIDEO_MB, num_replicas: int = 1,
                    num_cpus: float = 0, **load_kwargs: Any) -> Any:
    """A Ray Serve application (bound deployment) tracking uploaded videos with ``model``; pass it to ``serve.run``
    with ``route_prefix="/track"``.

    Args:
        model: model path (readable where the replicas run).
        max_upload_mb: videos above this are refused with 413.
        num_replicas, num_cpus: replicas (each tracks one video at a time) and the CPUs each reserves (default 0:
            it shares the machine with the detection replicas and never keeps ``serve_model`` from starting).
        **load_kwargs: for :func:`unideploy.load` (backend, device, threads, iou, ...).
    """
    from unideploy.apps.distributed import require_ray

    require_ray()
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse

    model = str(Path(model).resolve())
    limit = int(float(max_upload_mb) * 1024 * 1024)

    class TrackServer:
        """Reads the upload, checks it, and streams the tracked frames."""

        def __init__(self) -> None:
            from unideploy.runtime.load import load

            self.predictor = load(model, **load_kwargs)

        async def __call__(self, request: Request) -> Any:
            try:
                if request.method == "GET":
                    return JSONResponse({"model": Path(model).name, "trackers": ["bytetrack", "botsort"],
                                         "max_upload_mb": max_upload_mb})
                if request.method != "POST":
                    raise RequestError(405, f"method {request.method} not allowed; use POST /track")
                tracker = request.query_params.get("tracker", "bytetrack")
                if tracker not in ("bytetrack", "botsort"):
                    raise RequestError(400, f"tracker must be bytetrack or botsort, got {tracker!r}")
                conf = _conf(request.query_params.get("conf"))
                chunks, size = [], 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise RequestError(413, f"upload is over the limit of {limit} bytes ({max_upload_mb:g} MB)")
                    chunks.append(chunk)
                video = video_from_upload(request.headers.get("content-type", ""), b"".join(chunks))
                # the name only marks it a video: FFmpeg reads the container from its content
                fd, name = tempfile.mkstemp(suffix=".mp4", prefix="unideploy-track-")
                with os.fdopen(fd, "wb") as f:
                    f.write(video)
                path = Path(name)
                try:
                    _check_video(path)
                except RequestError:
                    path.unlink(missing_ok=True)
                    raise
            except RequestError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)

            def lines() -> Iterator[bytes]:
                try:
                    yield from track_lines(self.predictor, path, tracker, conf)
                finally:
                    path.unlink(missing_ok=True)

            return StreamingResponse(lines(), media_type="application/x-ndjson")

    return serve.deployment(TrackServer, name="unideploy-track", num_replicas=int(num_replicas),
                            ray_actor_options={"num_cpus": num_cpus}, max_ongoing_requests=1).bind()


def _conf(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise RequestError(400, f"conf must be a number between 0 and 1, got {text!r}")
    return value
