"""Tracking over a predictor's stream: every frame's detections through one tracker, in frame order."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from unideploy.core.errors import InputError
from unideploy.core.ops.boxes import clip_boxes
from unideploy.core.results import Detections, OrientedDetections
from unideploy.core.sources import Outcome
from unideploy.runtime.tracking.byte_tracker import make_tracker
from unideploy.runtime.tracking.config import TrackerConfig, tracker_config

__all__ = ["DEFAULT_CONF", "track_stream"]

#: detection threshold when neither the predictor nor the call sets one (Ultralytics' ``track`` uses 0.1 too)
DEFAULT_CONF = 0.1

TrackerArg = str | os.PathLike | Mapping[str, Any] | TrackerConfig


def track_stream(predictor: Any, source: Any, tracker: TrackerArg = "bytetrack", *,
                 tracker_config_file: str | os.PathLike | Mapping[str, Any] | None = None, keep_images: bool = False,
                 vid_stride: int = 1, **options: Any) -> Iterator[Outcome]:
    """Predict ``source`` frame by frame and track: each Outcome's result carries ``tracker_id``.

    The source (a video, a stream, a folder or list of frames) is one sequence: one tracker follows it from the
    first item to the last, identities starting at 1. Items that fail to decode are yielded with their error and
    the tracker does not advance. Without a ``conf`` (here or on the predictor) detections down to
    :data:`DEFAULT_CONF` (0.1) are kept, as Ultralytics' ``track`` does, so that ByteTrack's second association sees
    the low-score boxes.

    Raises:
        OptionError: a bad tracker setting or postprocessing option (before anything runs).
        InputError: the model is not a detector.
    """
    config = tracker_config(tracker, tracker_config_file)
    if predictor.task == "classify":
        raise InputError(f"tracking needs a detection model; {predictor.path.name} is a classifier")
    if options.get("conf") is None and getattr(predictor.options, "conf", None) is None:
        options["conf"] = DEFAULT_CONF  # the trackers' second association needs the low-score boxes
    trk = make_tracker(config)
    needs_image = keep_images or config.tracker_type == "botsort" and config.gmc_method != "none"
    gen = predictor.stream(source, keep_images=needs_image, vid_stride=vid_stride, **options)
    return _tracked(gen, trk, keep_images)


def _tracked(gen: Iterator[Outcome], trk: Any, keep_images: bool) -> Iterator[Outcome]:
    try:
        for out in gen:
            if out.ok and isinstance(out.result, Detections):
                out.result = trk.update(out.result, out.image)
                if out.result.image_shape is not None and not isinstance(out.result, OrientedDetections):
                    # Kalman boxes may leave the frame: clipped, as Ultralytics' Results clip them (rotated boxes
                    # are not clipped there either); the tracker hands out a fresh array each frame
                    clip_boxes(out.result.xyxy, out.result.image_shape)
                if not keep_images:
                    out.image = None
            yield out
    finally:
        gen.close()
