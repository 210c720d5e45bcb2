"""``track``: a detector over a video, stream or frame sequence, with identities kept across frames.

This is what ``unideploy track`` runs: the model is opened (or an open Predictor used), every frame is predicted and
handed to one tracker (ByteTrack or BoT-SORT, configured with Ultralytics' YAML keys), and each tracked frame goes to
the sinks: MOTChallenge text, JSON lines (with ``tracker_id``), an annotated video with identities and trails.

Example:
    >>> import unideploy
    >>> from unideploy.tools.track import track
    >>> s = track("model.onnx", "clip.mp4", tracker="botsort", save_mot="tracks.txt")  # doctest: +SKIP
    >>> s.frames, s.tracks  # doctest: +SKIP
    (300, 14)
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from unideploy.core.errors import InputError, SourceError
from unideploy.core.sinks import JsonLinesSink, Sink, Sinks
from unideploy.core.sources import Source, VideoStats, is_stream_url
from unideploy.core.streams import LiveSource, StreamOptions
from unideploy.tools.predict import batch_hint, load_kwargs
from unideploy.tools.track_sinks import MotSink, TrackVideoSink

__all__ = ["TrackSummary", "track"]

PathOrSink = str | os.PathLike | Sink | None


@dataclass
class TrackSummary:
    """What a :func:`track` run did.

    Attributes:
        frames: frames tracked. detections: tracked boxes over all frames. tracks: distinct identities.
        failures: ``(name, why)`` of frames that could not be read. seconds: wall time (model loading excluded).
        tracker: the tracker settings used (Ultralytics' keys). saved: outputs written. video: what reading met.
    """

    frames: int = 0
    detections: int = 0
    tracks: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    tracker: dict[str, Any] = field(default_factory=dict)
    saved: list[str] = field(default_factory=list)
    video: VideoStats | None = None

    @property
    def fps(self) -> float:
        """Frames per second, end to end."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _sink(value: PathOrSink, kind: type) -> Sink | None:
    if value is None or value == "":
        return None
    return value if hasattr(value, "add") and hasattr(value, "close") else kind(value)  # type: ignore[return-value]


def track(
    model: Any,
    source: Any,
    *,
    tracker: str | os.PathLike | Mapping[str, Any] = "bytetrack",
    tracker_config: str | os.PathLike | Mapping[str, Any] | None = None,
    backend: str | None = None,
    device: str | None = None,
    imgsz: int | Sequence[int] | str | None = None,
    batch: int | None = None,
    family: str | None = None,
    threads: int | None = None,
    sha256: str | Sequence[str] | None = None,
    precision: str | None = None,
    trust_pickle: bool = False,
    hint: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    classes: Sequence[int] | None = None,
    vid_stride: int = 1,
    stream_policy: str = "latest",
    reconnect: int = 5,
    save_mot: PathOrSink = None,
    save_jsonl: PathOrSink = None,
    save_video: PathOrSink = None,
    sinks: Sequence[Sink] = (),
) -> TrackSummary:
    """Track objects through ``source`` and hand each tracked frame to the sinks.

    Args:
        model: a model file (opened and closed here) or an open Predictor (left open).
        source: a video file, a stream URL, or a folder / list of frames (tracked as one sequence).
        tracker: "bytetrack", "botsort", or a tracker YAML in Ultralytics' keys.
        tracker_config: a tracker YAML (or mapping) overriding the tracker's defaults.
        backend, device, imgsz, batch, family, threads, sha256, precision, trust_pickle, hint, backend_options: as
            for :func:`unideploy.predict` (a file source gets the throughput hint by default, a live stream latency).
        conf, iou, max_det, classes: postprocessing (None: the family's default, except ``conf``: 0.1, as in
            Ultralytics' ``track``; the trackers' own thresholds then apply to the boxes kept).
        vid_stride: use every N-th frame.
        stream_policy: for a stream URL: "latest" (drop frames inference is too slow for) or "every" (bounded
            queue, nothing dropped). reconnect: reopen attempts (with backoff) after a stream drops.
        save_mot: MOTChallenge text. save_jsonl: one JSON line per frame. save_video: annotated video with ids.
        sinks: further sinks.

    Raises:
        OptionError: a bad tracker key or value. SourceError: an unusable source. InputError: not a detector.
    """
    from unideploy.runtime.load import load
    from unideploy.runtime.predictor import Predictor
    from unideploy.runtime.tracking.config import tracker_config as resolve

    config = resolve(tracker, tracker_config)  # checked before the model is opened
    opened = not isinstance(model, Predictor)
    post = {"conf": conf, "iou": iou, "max_det": max_det, "classes": classes}
    if isinstance(source, Source):
        src = source
    elif is_stream_url(source):
        src = LiveSource(str(source), StreamOptions(policy=stream_policy, reconnect=reconnect), vid_stride)
    else:
        src = Source(source, vid_stride)
    if opened and not isinstance(src, LiveSource) and not isinstance(src.video, str):  # a file: a batch job
        hint = batch_hint(hint, backend_options)
    given = load_kwargs(backend=backend, device=device, imgsz=imgsz, batch=batch, family=family, threads=threads,
                        sha256=sha256, precision=precision, trust_pickle=trust_pickle, hint=hint,
                        backend_options=backend_options)
    if opened:
        predictor = load(model, **given, **load_kwargs(**post))
        overrides: dict[str, Any] = {}
    else:
        if given:
            raise InputError(f"{', '.join(given)}: these open a model; track() was given an open Predictor")
        predictor, overrides = model, {k: v for k, v in post.items() if v is not None}
    summary = TrackSummary(tracker=config.to_dict())
    try:
        group = Sinks(*(s for s in (_sink(save_mot, MotSink), _sink(save_jsonl, JsonLinesSink),
                                    _sink(save_video, TrackVideoSink)) if s is not None), *sinks)
        summary.saved = [str(getattr(v, "path", v)) for v in (save_mot, save_jsonl, save_video) if v]
        ids: set[int] = set()
        videos = [s for s in group.sinks if isinstance(s, TrackVideoSink) and s.fps is None]
        t0 = time.perf_counter()
        try:
            for out in predictor.track(src, config, keep_images=group.wants_image, **overrides):
                if videos and src.stats is not None:
                    for v in videos:
                        v.fps = src.stats.fps / src.vid_stride
                    videos = []
                if out.ok:
                    summary.frames += 1
                    summary.detections += len(out.result)
                    ids.update(out.result.tracker_id.tolist())
                else:
                    summary.failures.append((out.item.name, str(out.error)))
                group.add(out)
        finally:
            group.close()
            summary.seconds = time.perf_counter() - t0
        summary.tracks = len(ids)
    finally:
        if opened:
            predictor.close()
    summary.video = src.stats
    if src.is_video and summary.frames == 0 and not summary.failures:
        raise SourceError(f"{src.video}: expected a video with frames, got none")
    return summary
