"""Tracker settings in Ultralytics' YAML keys, validated once.

A tracker YAML written for Ultralytics (``bytetrack.yaml``, ``botsort.yaml``) loads unchanged: the same keys, the
same defaults. Unknown keys and out-of-range values are an :class:`~unideploy.core.errors.OptionError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from unideploy.core.errors import InputError, OptionError
from unideploy.core.options import check_fraction, check_non_negative_int, unknown_keys

__all__ = ["GMC_METHODS", "TRACKER_TYPES", "TrackerConfig", "tracker_config"]

#: tracker types this package runs (Ultralytics' ``tracker_type``)
TRACKER_TYPES = ("bytetrack", "botsort")
#: global motion compensation methods (BoT-SORT's ``gmc_method``); None / "none" turn it off
GMC_METHODS = ("sparseOptFlow", "none")


@dataclass(frozen=True)
class TrackerConfig:
    """One tracker's settings (the keys and defaults of Ultralytics' ``cfg/trackers/*.yaml``).

    Args:
        tracker_type: "bytetrack" or "botsort".
        track_high_thresh: detections scoring at least this enter the first association.
        track_low_thresh: detections scoring above this (and below the high threshold) enter the second one.
        new_track_thresh: an unmatched detection scoring at least this starts a track.
        track_buffer: frames a lost track is kept before it is removed.
        match_thresh: largest cost (1 - IoU, score-fused) accepted in the first association.
        fuse_score: multiply IoU by the detection score when matching.
        gmc_method: BoT-SORT's camera-motion compensation: "sparseOptFlow" or "none".
        proximity_thresh, appearance_thresh, with_reid, model: BoT-SORT's ReID settings; ReID is not available
            (``with_reid`` must be false), the others are accepted so a BoT-SORT YAML loads unchanged.

    Example:
        >>> TrackerConfig("bytetrack", track_buffer=60).track_buffer
        60
    """

    tracker_type: str = "bytetrack"
    track_high_thresh: float = 0.25
    track_low_thresh: float = 0.1
    new_track_thresh: float = 0.25
    track_buffer: int = 30
    match_thresh: float = 0.8
    fuse_score: bool = True
    gmc_method: str | None = "sparseOptFlow"
    proximity_thresh: float = 0.5
    appearance_thresh: float = 0.8
    with_reid: bool = False
    model: str = "auto"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.tracker_type not in TRACKER_TYPES:
            raise OptionError("tracker_type", f"must be one of {', '.join(TRACKER_TYPES)}, got {self.tracker_type!r}")
        for name in ("track_high_thresh", "track_low_thresh", "new_track_thresh", "match_thresh",
                     "proximity_thresh", "appearance_thresh"):
            set_(self, name, check_fraction(getattr(self, name), name))
        set_(self, "track_buffer", check_non_negative_int(self.track_buffer, "track_buffer"))
        for name in ("fuse_score", "with_reid"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(name, f"must be true or false, got {getattr(self, name)!r}")
        gmc = "none" if self.gmc_method in (None, "None") else self.gmc_method
        if gmc not in GMC_METHODS:
            raise OptionError("gmc_method", f"must be one of {', '.join(GMC_METHODS)} (orb, sift and ecc are not "
                                            f"available), got {self.gmc_method!r}")
        set_(self, "gmc_method", gmc)
        if self.with_reid:
            raise OptionError("with_reid", "must be false: ReID is not available in this tracker")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], default_type: str | None = None) -> TrackerConfig:
        """Settings from a mapping (a parsed YAML); missing keys take the defaults of ``tracker_type``.

        Raises:
            OptionError: an unknown key (the message lists the valid ones) or a value out of range.
        """
        values = dict(values)
        unknown_keys(values, [f.name for f in fields(cls)], "tracker")
        kind = values.setdefault("tracker_type", default_type or "bytetrack")
        if kind == "bytetrack":
            values.setdefault("gmc_method", "none")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (a YAML Ultralytics reads)."""
        return dataclasses.asdict(self)


def tracker_config(tracker: str | os.PathLike | Mapping[str, Any] | TrackerConfig = "bytetrack",
                   config: str | os.PathLike | Mapping[str, Any] | None = None) -> TrackerConfig:
    """Resolve a tracker name, a YAML file or a mapping, plus an optional settings file, into a TrackerConfig.

    Args:
        tracker: "bytetrack", "botsort", "bytetrack.yaml" / "botsort.yaml" (Ultralytics' names), a path to a
            tracker YAML, a mapping of settings, or a TrackerConfig.
        config: a tracker YAML (or mapping) whose keys override the defaults of ``tracker``'s type.

    Raises:
        OptionError: an unknown tracker name or key, or a value out of range.
        InputError: a YAML file that cannot be read or is not a mapping.

    Example:
        >>> tracker_config("botsort", {"track_buffer": 10}).gmc_method
        'sparseOptFlow'
    """
    if isinstance(tracker, TrackerConfig):
        base: dict[str, Any] = tracker.to_dict()
    elif isinstance(tracker, Mapping):
        base = dict(tracker)
    else:
        name = str(tracker)
        stem = name[:-5] if name.endswith(".yaml") else name
        if stem in TRACKER_TYPES and not Path(name).is_file():
            base = {"tracker_type": stem}
        elif Path(name).suffix in (".yaml", ".yml"):
            base = _read_yaml(name)
        else:
            raise OptionError("tracker", f"must be one of {', '.join(TRACKER_TYPES)} or a tracker YAML file, "
                                         f"got {name!r}")
    if config is not None:
        extra = dict(config) if isinstance(config, Mapping) else _read_yaml(config)
        if "tracker_type" in extra and "tracker_type" in base and extra["tracker_type"] != base["tracker_type"]:
            base = {}
        base.update(extra)
    return TrackerConfig.from_mapping(base)


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"tracker config {p}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"tracker config {p}: cannot be read as YAML ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"tracker config {p}: expected a mapping of tracker settings, got {type(data).__name__}")
    return data
