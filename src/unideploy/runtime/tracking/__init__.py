"""Multi-object tracking: ByteTrack and BoT-SORT over :class:`~unideploy.core.results.Detections`, torch-free.

Configured with Ultralytics' tracker YAML keys (:class:`TrackerConfig`, :func:`tracker_config`).

Example:
    >>> from unideploy.runtime.tracking import make_tracker, tracker_config
    >>> tracker = make_tracker(tracker_config("bytetrack"))
"""

from __future__ import annotations

from unideploy.runtime.tracking.byte_tracker import BotSort, ByteTrack, Track, make_tracker
from unideploy.runtime.tracking.config import GMC_METHODS, TRACKER_TYPES, TrackerConfig, tracker_config

__all__ = ["GMC_METHODS", "TRACKER_TYPES", "BotSort", "ByteTrack", "Track", "TrackerConfig", "make_tracker",
           "tracker_config"]
