"""The tracking part of ``unideploy demo``: the bundled clip tracked with ByteTrack and BoT-SORT, scored with HOTA.

The clip (``assets/demo/tracks/shapes-01``: 120 frames of moving shapes with crossings, an occluder, objects
entering and leaving, speed changes and camera shake, written by ``tools/make_tracks.py``) ships with its
ground-truth tracks, so the demo shows identities kept across frames and measures them: HOTA, DetA, AssA, MOTA, IDF1
and ID switches (TrackEval), one row per tracker, with an annotated video and the MOTChallenge text of each.

Example:
    >>> from unideploy.apps.demo_track import run_demo_tracking
    >>> report = run_demo_tracking("out/demo")  # doctest: +SKIP
    >>> report["trackers"]["botsort"]["HOTA"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

__all__ = ["DEMO_TRACKS", "format_tracking_table", "run_demo_tracking", "tracking_markdown"]

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "demo"
DEMO_TRACKS = ASSETS / "tracks"
FIGURES = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW")


def run_demo_tracking(
    out: str | Path,
    *,
    model: str | Path | None = None,
    data: str | Path | None = None,
    trackers: tuple[str, ...] = ("bytetrack", "botsort"),
    log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Track the demo clip with each tracker into ``out/tracking/`` and score it; None when the model does not fit.

    Args:
        out: the demo's output folder (``tracking/<tracker>.mp4`` and ``tracking/<tracker>/<seq>.txt`` go in it).
        model: the detector (default: the bundled one); skipped when its class names are not the clip's.
        data: a MOTChallenge layout (default: the bundled clip).
        trackers: which trackers to run.
        log: progress lines.

    Returns:
        {"data", "frames", "trackers": {name: {HOTA, DetA, AssA, MOTA, IDF1, IDSW, fps, tracks, video, mot}}};
        the metrics are absent (with a log line) when TrackEval is not installed.
    """
    from unideploy.runtime.load import load
    from unideploy.tools.evaluate.tracking import load_mot, score_tracks
    from unideploy.tools.track import track
    from unideploy.tools.track_sinks import MotSink

    model = Path(model) if model else ASSETS / "shapes_yolov8.onnx"
    seqs = load_mot(Path(data) if data else DEMO_TRACKS)
    scoring = importlib.util.find_spec("trackeval") is not None
    if not scoring:
        log("trackeval not installed: tracking without HOTA / IDF1 (pip install 'unideploy[track-eval]')")
    folder = Path(out) / "tracking"
    report: dict[str, Any] = {"data": str(seqs[0].root.parent.resolve()), "sequences": [s.name for s in seqs],
                              "frames": sum(s.frames for s in seqs), "trackers": {}}
    with load(model) as predictor:
        names = list(predictor.names.values())
        if seqs[0].names and names != seqs[0].names:
            log(f"tracking skipped: {model.name} detects {names[:6]}, the clip's classes are {seqs[0].names}")
            return None
        for kind in trackers:
            log(f"[tracking] {kind} on {', '.join(s.name for s in seqs)}")
            pairs, row = [], {"fps": 0.0, "tracks": 0, "frames": 0, "seconds": 0.0}
            for s in seqs:
                mot = MotSink(folder / kind / f"{s.name}.txt")
                video = folder / (f"{kind}.mp4" if len(seqs) == 1 else f"{kind}_{s.name}.mp4")
                r = track(predictor, str(s.source), tracker=kind, save_video=str(video), sinks=[mot])
                pairs.append((s.gt, mot.rows(), max(s.frames, r.frames)))
                row["tracks"] += r.tracks
                row["frames"] += r.frames
                row["seconds"] += r.seconds
                row.setdefault("video", str(video.resolve()))
                row.setdefault("mot", str(mot.path.resolve()))
            row["fps"] = row["frames"] / row["seconds"] if row["seconds"] else 0.0
            if scoring:
                m = score_tracks(pairs, names=seqs[0].names)["metrics"]
                row.update({k: m[k] for k in (*FIGURES, "gt_tracks")})
            report["trackers"][kind] = row
    print(format_tracking_table(report))
    return report


def format_tracking_table(report: dict[str, Any]) -> str:
    """One line per tracker: HOTA ... IDSW (when scored), identities, frames/s."""
    head = f"{'tracker':<10}" + "".join(f"{c:>8}" for c in FIGURES) + f"{'tracks':>8}{'fps':>7}"
    lines = [f"tracking: {', '.join(report['sequences'])} ({report['frames']} frames)", head, "-" * len(head)]
    for kind, r in report["trackers"].items():
        cells = "".join(f"{r[c]:>8}" if c == "IDSW" else f"{r[c]:>8.4f}" for c in FIGURES) if "HOTA" in r else \
            "".join(f"{'-':>8}" for _ in FIGURES)
        lines.append(f"{kind:<10}{cells}{r['tracks']:>8}{r['fps']:>7.1f}")
    return "\n".join(lines)


def tracking_markdown(report: dict[str, Any] | None) -> str:
    """The report.md section (empty when tracking was skipped)."""
    if not report:
        return ""
    gt = next((r.get("gt_tracks") for r in report["trackers"].values() if "gt_tracks" in r), None)
    videos = ", ".join(f"[{k}](tracking/{Path(r['video']).name})" for k, r in report["trackers"].items())
    return "\n".join([
        "", "## Tracking", "",
        f"The bundled clip ({report['frames']} frames{f', {gt} ground-truth tracks' if gt else ''}: crossings, an "
        "occluder, objects entering and leaving, speed changes, camera shake) tracked with the demo detector "
        "(conf 0.1) and each tracker, scored with TrackEval (HOTA and its detection / association parts, MOTA, IDF1, "
        "ID switches; class-agnostic). `unideploy eval MODEL --data <MOTChallenge folder> --tracker botsort` "
        "gives the same figures, per class too.", "",
        "```", format_tracking_table(report), "```", "", f"Annotated videos: {videos}.", ""])
