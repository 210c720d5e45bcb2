"""Tracking accuracy on MOTChallenge ground truth: HOTA, DetA, AssA, MOTA, IDF1, ID switches (TrackEval).

``evaluate_tracking`` runs :func:`unideploy.tools.track.track` over every sequence of a MOTChallenge layout and scores
the tracks with TrackEval's metric classes (``pip install 'unideploy[track-eval]'``), class-agnostic and per class.
``track_metrics`` scores tracks that already exist (MOTChallenge text rows).

The layout (what ``tools/make_tracks.py`` writes; a MOT17/MOT20 sequence folder also works)::

    DATA/<seq>/seqinfo.ini    [Sequence] imDir=img1, seqLength=N, frameRate=..., optional video=<file>,
                              classNames=a,b,...
    DATA/<seq>/gt/gt.txt      frame,id,x,y,w,h,consider,class,visibility   (frame, id, class 1-based)
    DATA/<seq>/img1/000001.jpg ... (or the video named in seqinfo.ini)

``DATA`` is one sequence folder or a folder of them. A ground-truth row with ``consider`` 0 is an ignore region:
it counts neither as a miss nor, when a predicted box matches it (IoU >= 0.5, one-to-one), as a false positive.
Predicted and ground-truth classes are compared as ``class_id + 1`` (the MOTChallenge text of ``--save-mot``).

Example:
    >>> from unideploy.tools.evaluate.tracking import evaluate_tracking
    >>> r = evaluate_tracking("model.onnx", "tracks/", tracker="botsort")  # doctest: +SKIP
    >>> r["metrics"]["HOTA"], r["metrics"]["IDF1"], r["metrics"]["IDSW"]  # doctest: +SKIP
"""

from __future__ import annotations

import configparser
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import BackendUnavailableError, InputError, SourceError
from unideploy.core.ops.boxes import box_iou

__all__ = ["MotSequence", "evaluate_tracking", "format_tracking_report", "is_mot_data", "load_mot", "read_mot",
           "score_tracks", "track_metrics"]

#: the headline figures, in the order reports show them (HOTA family: means over the IoU thresholds 0.05..0.95)
FIELDS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "MOTA", "MOTP", "IDF1", "IDP", "IDR",
          "IDSW", "Frag", "MT", "ML", "FP", "FN", "TP")
IGNORE_IOU = 0.5


@dataclass
class MotSequence:
    """One MOTChallenge sequence: its frames (a folder or a video), ground truth rows and class names."""

    name: str
    root: Path
    source: Path
    gt: np.ndarray  # (n, 9): frame, id, x, y, w, h, consider, class, visibility
    frames: int
    fps: float | None = None
    names: list[str] | None = None


def read_mot(path: str | os.PathLike, columns: int = 9) -> np.ndarray:
    """MOTChallenge text (``frame,id,x,y,w,h,...``) as a float64 array (n, ``columns``); missing columns are -1.

    Raises:
        SourceError: the file is missing or a line has fewer than 6 numbers.
    """
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"{p}: expected a MOTChallenge text file (frame,id,x,y,w,h,...), no such file")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.replace(" ", "").split(",") if v != ""]
        except ValueError:
            vals = []
        if len(vals) < 6:
            raise SourceError(f"{p}:{n}: expected frame,id,x,y,w,h[,...] numbers, got {line.strip()[:60]!r}")
        rows.append((vals + [-1.0] * columns)[:columns])
    return np.array(rows, np.float64).reshape(-1, columns)


def _is_sequence(p: Path) -> bool:
    return (p / "gt" / "gt.txt").is_file() and ((p / "seqinfo.ini").is_file() or (p / "img1").is_dir())


def is_mot_data(path: str | os.PathLike) -> bool:
    """True if ``path`` is a MOTChallenge sequence folder or a folder holding some."""
    p = Path(path)
    return p.is_dir() and (_is_sequence(p) or any(_is_sequence(c) for c in p.iterdir() if c.is_dir()))


def _sequence(root: Path) -> MotSequence:
    info: dict[str, str] = {}
    if (root / "seqinfo.ini").is_file():
        cp = configparser.ConfigParser()
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read(root / "seqinfo.ini")
        info = dict(cp["Sequence"]) if cp.has_section("Sequence") else {}
    video = info.get("video")
    source = root / video if video and not (root / info.get("imDir", "img1")).is_dir() else root / info.get("imDir", "img1")
    if not source.exists():
        raise SourceError(f"{root}: expected the frames in {source.name}/ (seqinfo.ini imDir or video), not found")
    gt = read_mot(root / "gt" / "gt.txt")
    frames = int(info.get("seqLength", 0)) or int(gt[:, 0].max(initial=0))
    names = [n for n in info.get("classNames", "").split(",") if n] or None
    fps = float(info["frameRate"]) if info.get("frameRate") else None
    return MotSequence(info.get("name", root.name), root, source, gt, frames, fps, names)


def load_mot(data: str | os.PathLike) -> list[MotSequence]:
    """The sequences of a MOTChallenge layout: ``data`` is one sequence folder or a folder of them (sorted).

    Raises:
        SourceError: ``data`` holds no sequence (``seqinfo.ini`` or ``img1/``, and ``gt/gt.txt``).
    """
    p = Path(data)
    if p.is_dir() and _is_sequence(p):
        return [_sequence(p)]
    seqs = sorted(c for c in p.iterdir() if c.is_dir() and _is_sequence(c)) if p.is_dir() else []
    if not seqs:
        raise SourceError(f"{p}: expected a MOTChallenge sequence folder (seqinfo.ini or img1/, and gt/gt.txt) "
                          "or a folder of them, got none")
    return [_sequence(c) for c in seqs]


def _trackeval() -> Any:
    try:
        import trackeval.metrics as m
    except ImportError as e:  # pragma: no cover - the dev environment has it
        raise BackendUnavailableError("tracking metrics need TrackEval: pip install 'unideploy[track-eval]'") from e
    return m


def _xyxy(rows: np.ndarray) -> np.ndarray:
    return np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], 1)


def _timestep_data(gt: np.ndarray, pred: np.ndarray, frames: int) -> dict[str, Any]:
    """TrackEval's per-sequence input: ids renumbered from 0, IoU similarities, ignore regions applied."""
    gt_by = {int(f): gt[gt[:, 0] == f] for f in np.unique(gt[:, 0])}
    pr_by = {int(f): pred[pred[:, 0] == f] for f in np.unique(pred[:, 0])}
    empty = np.zeros((0, 9))
    gts, prs, sims = [], [], []
    for f in range(1, frames + 1):
        g, p = gt_by.get(f, empty), pr_by.get(f, empty)
        if len(p) != len(np.unique(p[:, 1])):
            raise InputError(f"frame {f}: expected one box per track id, got ids {sorted(p[:, 1].astype(int).tolist())}")
        ignore = g[:, 6] == 0
        if ignore.any() and len(p):
            from scipy.optimize import linear_sum_assignment

            iou = box_iou(_xyxy(g), _xyxy(p))
            iou[iou < IGNORE_IOU - np.finfo(float).eps] = 0
            r, c = linear_sum_assignment(-iou)
            drop = c[(iou[r, c] > 0) & ignore[r]]
            p = np.delete(p, drop, 0)
        g = g[~ignore]
        gts.append(g)
        prs.append(p)
        sims.append(box_iou(_xyxy(g), _xyxy(p)))
    gt_ids = np.unique(np.concatenate([g[:, 1] for g in gts])) if gts else np.zeros(0)
    pr_ids = np.unique(np.concatenate([p[:, 1] for p in prs])) if prs else np.zeros(0)
    return {
        "num_timesteps": frames, "num_gt_ids": len(gt_ids), "num_tracker_ids": len(pr_ids),
        "num_gt_dets": sum(len(g) for g in gts), "num_tracker_dets": sum(len(p) for p in prs),
        "gt_ids": [np.searchsorted(gt_ids, g[:, 1]).astype(int) for g in gts],
        "tracker_ids": [np.searchsorted(pr_ids, p[:, 1]).astype(int) for p in prs],
        "similarity_scores": sims,
    }


def _metric_objects() -> list[Any]:
    m = _trackeval()
    quiet = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}
    return [m.HOTA(), m.CLEAR(quiet), m.Identity(quiet)]


def _summary(res: Mapping[str, Mapping[str, Any]], gt_ids: int, pred_ids: int) -> dict[str, Any]:
    hota, clear, ident = res["HOTA"], res["CLEAR"], res["Identity"]
    out: dict[str, Any] = {k: float(np.mean(hota[k])) for k in ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe",
                                                                 "AssPr", "LocA")}
    out.update({"MOTA": float(clear["MOTA"]), "MOTP": float(clear["MOTP"]), "IDF1": float(ident["IDF1"]),
                "IDP": float(ident["IDP"]), "IDR": float(ident["IDR"])})
    out.update({k: int(clear[k]) for k in ("IDSW", "Frag", "MT", "ML")})
    out.update({"FP": int(clear["CLR_FP"]), "FN": int(clear["CLR_FN"]), "TP": int(clear["CLR_TP"]),
                "gt_tracks": gt_ids, "tracks": pred_ids})
    return out


def _score(pairs: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score (gt, pred, frames) sequences: (combined summary, per-sequence summaries)."""
    metrics = _metric_objects()
    per_seq, raw = [], {}
    for i, (gt, pred, frames) in enumerate(pairs):
        data = _timestep_data(gt, pred, frames)
        raw[i] = {m.get_name(): m.eval_sequence(data) for m in metrics}
        per_seq.append(_summary(raw[i], data["num_gt_ids"], data["num_tracker_ids"]))
    combined = {m.get_name(): m.combine_sequences({k: v[m.get_name()] for k, v in raw.items()}) for m in metrics}
    return _summary(combined, sum(s["gt_tracks"] for s in per_seq), sum(s["tracks"] for s in per_seq)), per_seq


def _as_rows(x: Any, what: str) -> np.ndarray:
    a = read_mot(x) if isinstance(x, (str, os.PathLike)) else np.asarray(x, np.float64)
    if a.ndim != 2 or a.shape[1] < 6:
        raise InputError(f"{what} must be MOTChallenge rows (n, >=6): frame,id,x,y,w,h,..., got shape {a.shape}")
    return np.concatenate([a, np.full((len(a), 9 - a.shape[1]), -1.0)], 1) if a.shape[1] < 9 else a[:, :9]


def track_metrics(
    gt: Any,
    pred: Any,
    *,
    frames: int | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """HOTA, DetA, AssA, MOTA, IDF1, IDSW ... of predicted tracks against ground truth, over one sequence.

    Args:
        gt: ground-truth rows ``frame,id,x,y,w,h,consider,class,visibility`` (array or MOT text file); a ground
            truth with 6 columns is all considered and classless.
        pred: predicted rows ``frame,id,x,y,w,h,score,class,...`` (array or MOT text file).
        frames: the sequence length (default: the last frame in either).
        names: class names, index ``class - 1``, for the per-class table.

    Returns:
        {"metrics": class-agnostic figures (:data:`FIELDS`, plus gt_tracks/tracks), "per_class": {name: figures}}.

    Example:
        >>> gt = np.array([[f, 1, 10 * f, 0, 10, 10, 1, 1, 1] for f in range(1, 4)], float)
        >>> track_metrics(gt, gt)["metrics"]["HOTA"]
        1.0
    """
    r = score_tracks([(gt, pred, frames)], names=names)
    return {"metrics": r["metrics"], "per_class": r["per_class"]}


def score_tracks(sequences: Sequence[tuple[Any, Any, int | None]], *, names: Sequence[str] | None = None,
                 labels: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`track_metrics` over several sequences ``[(gt, pred, frames), ...]``, combined as TrackEval does.

    Returns:
        {"metrics": class-agnostic, "per_class": {name: figures}, "sequences": {label: figures}} (labels default
        to "1", "2", ...).
    """
    pairs = []
    for gt, pred, frames in sequences:
        g, p = _as_rows(gt, "gt"), _as_rows(pred, "pred")
        g[:, 6] = np.where(g[:, 6] < 0, 1, g[:, 6])  # a 6-column ground truth: every row considered
        pairs.append((g, p, int(frames or max(g[:, 0].max(initial=0), p[:, 0].max(initial=0)))))
    overall, per_seq = _score(pairs)
    labels = list(labels or (str(i + 1) for i in range(len(pairs))))
    return {"metrics": overall, "per_class": _per_class(pairs, names), "sequences": dict(zip(labels, per_seq))}


def _per_class(pairs: Sequence[tuple[np.ndarray, np.ndarray, int]], names: Sequence[str] | None) -> dict[str, Any]:
    classes = sorted({int(c) for g, p, _ in pairs for c in np.concatenate([g[:, 7], p[:, 7]]) if c > 0})
    out = {}
    for c in classes:
        name = names[c - 1] if names and 0 < c <= len(names) else str(c)
        out[name] = _score([(g[g[:, 7] == c], p[p[:, 7] == c], n) for g, p, n in pairs])[0]
    return out


def evaluate_tracking(
    model: Any,
    data: str | os.PathLike,
    *,
    tracker: str | os.PathLike | Mapping[str, Any] = "bytetrack",
    tracker_config: str | os.PathLike | Mapping[str, Any] | None = None,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    save_mot: str | os.PathLike | None = None,
    progress: bool = False,
    **load_kwargs: Any,
) -> dict[str, Any]:
    """Track every sequence of a MOTChallenge layout with ``model`` and score the tracks (class-agnostic, per class).

    Args:
        model: a model file (opened once, closed here) or an open Predictor.
        data: a MOTChallenge sequence folder or a folder of them (see the module docstring).
        tracker, tracker_config: as for :func:`unideploy.tools.track.track`.
        conf, iou, max_det: detector postprocessing (``conf`` None: 0.1, as for tracking).
        save_mot: a folder: each sequence's tracks are written there as ``<seq>.txt`` (TrackEval's tracker layout).
        progress: print one line per sequence on stderr.
        **load_kwargs: passed to :func:`unideploy.load` when ``model`` is a path (backend, device, imgsz ...).

    Returns:
        {"metrics": class-agnostic figures, "per_class": {name: figures}, "sequences": {name: figures},
        "frames", "seconds", "fps", "tracker", "model", "data"}; figures are :data:`FIELDS` (fractions, counts).
    """
    import sys

    from unideploy.runtime.load import load
    from unideploy.runtime.predictor import Predictor
    from unideploy.runtime.tracking.config import tracker_config as resolve
    from unideploy.tools.track import track
    from unideploy.tools.track_sinks import MotSink

    resolve(tracker, tracker_config)  # a bad tracker setting fails before the model is opened
    seqs = load_mot(data)
    _trackeval()
    own = not isinstance(model, Predictor)
    predictor = load(model, **load_kwargs) if own else model
    pairs, frames, seconds, settings = [], 0, 0.0, {}
    try:
        for s in seqs:
            sink = MotSink(Path(save_mot) / f"{s.name}.txt" if save_mot else None)
            summary = track(predictor, str(s.source), tracker=tracker, tracker_config=tracker_config, conf=conf,
                            iou=iou, max_det=max_det, sinks=[sink])
            frames, seconds, settings = frames + summary.frames, seconds + summary.seconds, summary.tracker
            pairs.append((s.gt, sink.rows(), max(s.frames, summary.frames)))
            if progress:
                print(f"{s.name}: {summary.frames} frame(s), {summary.tracks} track(s)", file=sys.stderr)
    finally:
        if own:
            predictor.close()
    names = next((s.names for s in seqs if s.names), None) or list(getattr(predictor, "names", {}).values()) or None
    t0 = time.perf_counter()
    report = {**score_tracks(pairs, names=names, labels=[s.name for s in seqs]), "frames": frames,
              "seconds": round(seconds, 3), "fps": frames / seconds if seconds else 0.0, "tracker": settings,
              "model": str(getattr(predictor, "path", model)), "data": str(Path(data).resolve())}
    report["scoring_seconds"] = round(time.perf_counter() - t0, 3)
    return report


def format_tracking_report(r: Mapping[str, Any]) -> str:
    """The report as a small table: one class-agnostic line, then one per class and per sequence."""
    cols = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW")
    head = f"  {'':<14}" + "".join(f"{c:>8}" for c in cols)

    def line(label: str, m: Mapping[str, Any]) -> str:
        return f"  {label[:14]:<14}" + "".join(f"{m[c]:>8}" if c == "IDSW" else f"{m[c]:>8.4f}" for c in cols)

    out = [f"{r.get('tracker', {}).get('tracker_type', '?')} on {len(r.get('sequences', {}))} sequence(s), "
           f"{r.get('frames', 0)} frames, {r.get('fps', 0):.1f} frames/s", head, line("all (agnostic)", r["metrics"])]
    out += [line(name, m) for name, m in r.get("per_class", {}).items()]
    if len(r.get("sequences", {})) > 1:
        out += [line(name, m) for name, m in r["sequences"].items()]
    return "\n".join(out)
