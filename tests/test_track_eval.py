"""Tracking evaluation (HOTA, MOTA, IDF1 with TrackEval): hand-computed cases, the MOTChallenge layout, the CLI, and
unideploy's trackers against Ultralytics' on the same detector and generated video."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trackeval")

from unideploy.cli.main import main  # noqa: E402
from unideploy.core.errors import InputError, SourceError  # noqa: E402
from unideploy.tools.evaluate.tracking import (  # noqa: E402
    evaluate_tracking, format_tracking_report, is_mot_data, load_mot, read_mot, track_metrics,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "src/unideploy/assets/demo/shapes_yolov8.onnx")
CLIP = REPO / "src/unideploy/assets/demo/tracks"


def _gt(tracks: dict[int, tuple[range, float, float, int]]) -> np.ndarray:
    """Ground truth rows of boxes 20x20 at (x0 + 3 f, y): {id: (frames, x0, y, class)}."""
    return np.array([[f, tid, x0 + 3 * f, y, 20, 20, 1, cls, 1.0]
                     for tid, (frames, x0, y, cls) in tracks.items() for f in frames], np.float64)


def _pred(gt: np.ndarray, relabel=None) -> np.ndarray:
    """Predictions equal to ``gt`` (score 0.9), ids changed by ``relabel(frame, id) -> id``."""
    p = gt.copy()
    p[:, 6], p[:, 8] = 0.9, -1
    if relabel is not None:
        p[:, 1] = [relabel(int(f), int(t)) for f, t in p[:, :2]]
    return p


def test_perfect_tracks_score_one():
    gt = _gt({1: (range(1, 11), 0, 0, 1), 2: (range(1, 11), 0, 100, 2), 3: (range(4, 9), 200, 50, 1)})
    r = track_metrics(gt, _pred(gt), names=["circle", "square"])
    m = r["metrics"]
    assert m["HOTA"] == pytest.approx(1.0) and m["DetA"] == pytest.approx(1.0) and m["AssA"] == pytest.approx(1.0)
    assert m["MOTA"] == 1.0 and m["IDF1"] == 1.0 and m["IDSW"] == 0 and m["FP"] == m["FN"] == 0 and m["TP"] == 25
    assert m["gt_tracks"] == m["tracks"] == 3
    assert set(r["per_class"]) == {"circle", "square"}
    assert all(v["HOTA"] == pytest.approx(1.0) for v in r["per_class"].values())


def test_one_id_switch_hand_computed():
    """One object, 10 frames; its track id changes at frame 6.

    IDSW 1; MOTA = 1 - 1/10; IDF1: the best one-to-one id match covers 5 of 10 boxes each way -> 2*5/(10+10) = 0.5;
    DetA 1 (every box exact); AssA: each matched pair shares 5 of the 10 (gt) boxes -> 0.5; HOTA = sqrt(1 * 0.5).
    """
    gt = _gt({1: (range(1, 11), 0, 0, 1)})
    m = track_metrics(gt, _pred(gt, lambda f, t: 1 if f <= 5 else 2))["metrics"]
    assert m["IDSW"] == 1 and m["MOTA"] == pytest.approx(0.9) and m["IDF1"] == pytest.approx(0.5)
    assert m["DetA"] == pytest.approx(1.0) and m["AssA"] == pytest.approx(0.5)
    assert m["HOTA"] == pytest.approx(math.sqrt(0.5))


def test_switch_among_two_objects_hand_computed():
    """A kept for 10 frames; B's id changes after frame 4.

    IDF1: IDTP = 10 (A) + 6 (B, longer part) = 16 of 20 boxes each way -> 0.8. MOTA = 1 - 1/20. AssA: A's 10 boxes
    score 1, B's first 4 score 4/10, its last 6 score 6/10 -> (10 + 4 * 0.4 + 6 * 0.6) / 20 = 0.76; HOTA = sqrt(0.76).
    """
    gt = _gt({1: (range(1, 11), 0, 0, 1), 2: (range(1, 11), 0, 200, 1)})
    m = track_metrics(gt, _pred(gt, lambda f, t: t if t == 1 or f <= 4 else 3))["metrics"]
    assert m["IDSW"] == 1 and m["IDF1"] == pytest.approx(0.8) and m["MOTA"] == pytest.approx(0.95)
    assert m["AssA"] == pytest.approx(0.76) and m["HOTA"] == pytest.approx(math.sqrt(0.76))
    assert m["IDP"] == pytest.approx(0.8) and m["IDR"] == pytest.approx(0.8) and m["tracks"] == 3


def test_ignored_ground_truth_false_positives_and_classes():
    gt = _gt({1: (range(1, 11), 0, 0, 1), 2: (range(1, 11), 0, 100, 2)})
    gt[(gt[:, 1] == 2) & (gt[:, 0] > 5), 6] = 0  # object 2 hidden (consider 0) from frame 6
    pred = _pred(gt)
    extra = np.array([[f, 9, 300, 300, 20, 20, 0.5, 1, -1] for f in (1, 2)], float)  # a false track, 2 boxes
    m = track_metrics(gt, np.concatenate([pred, extra]), names=["circle", "square"])
    # the 5 predicted boxes on ignored ground truth are neither misses nor false positives
    assert m["metrics"]["FP"] == 2 and m["metrics"]["FN"] == 0 and m["metrics"]["TP"] == 15
    assert m["metrics"]["MOTA"] == pytest.approx(1 - 2 / 15)
    assert m["per_class"]["square"]["MOTA"] == 1.0 and m["per_class"]["circle"]["FP"] == 2
    wrong = pred.copy()
    wrong[wrong[:, 1] == 1, 7] = 2  # object 1 predicted as a square: a miss for circles, false positives for squares
    r = track_metrics(gt, wrong, names=["circle", "square"])
    assert r["metrics"]["HOTA"] == pytest.approx(1.0)  # class-agnostic: still perfect
    assert r["per_class"]["circle"]["HOTA"] == 0.0 and r["per_class"]["square"]["FP"] == 10


def test_bad_tracking_inputs(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1,1,0,0,10,10,1,1,1\n2,1,zero,0\n")
    with pytest.raises(SourceError, match=r"bad.txt:2: expected frame,id,x,y,w,h") as e:
        read_mot(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(SourceError, match="expected a MOTChallenge sequence folder"):
        load_mot(tmp_path)
    assert not is_mot_data(tmp_path) and not is_mot_data(bad)
    gt = _gt({1: (range(1, 4), 0, 0, 1)})
    dup = np.concatenate([_pred(gt), _pred(gt)[:1]])
    with pytest.raises(InputError, match=r"frame 1: expected one box per track id, got ids \[1, 1\]"):
        track_metrics(gt, dup)
    with pytest.raises(InputError, match=r"pred must be MOTChallenge rows \(n, >=6\).*got shape \(3,\)"):
        track_metrics(gt, np.zeros(3))


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    """A 40-frame generated sequence (video + ground truth) in MOTChallenge layout."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_tracks
    finally:
        sys.path.remove(str(REPO / "tools"))
    out = tmp_path_factory.mktemp("mot")
    stats = make_tracks.write_sequence(out, "short-01", seed=3, index=0, frames=40, size=(480, 320), objects=6)
    assert stats["tracks"] >= 4 and stats["boxes"] > 100
    return out / "short-01"


def test_generated_sequence_layout(short_clip):
    (seq,) = load_mot(short_clip.parent)
    assert seq.name == "short-01" and seq.frames == 40 and seq.source.suffix == ".mp4" and seq.fps == 10
    assert seq.names == ["circle", "square", "triangle", "star", "hexagon", "cross"]
    gt = seq.gt
    assert set(np.unique(gt[:, 0])) <= set(range(1, 41)) and (gt[:, 4:6] > 0).all()
    assert ((gt[:, 2] >= 0) & (gt[:, 2] + gt[:, 4] <= 480.01)).all()  # clipped to the frame
    assert set(np.unique(gt[:, 6])) <= {0, 1} and (gt[:, 8] >= 0).all() and (gt[:, 8] <= 1).all()
    assert (gt[gt[:, 6] == 0, 8] < 0.2).all() and (gt[gt[:, 6] == 1, 8] >= 0.2).all()
    for tid in np.unique(gt[:, 1]):  # one box per id and frame
        frames = gt[gt[:, 1] == tid, 0]
        assert len(frames) == len(set(frames))


def test_eval_cli_and_demo_tracking_on_the_demo_clip(tmp_path, capsys):
    """``unideploy eval --tracker`` and the demo's tracking section score the bundled clip the same way."""
    from unideploy.apps.demo_track import run_demo_tracking, tracking_markdown

    report, mot = tmp_path / "r.json", tmp_path / "mot"
    assert main(["eval", DEMO, "--data", str(CLIP), "--tracker", "bytetrack", "--json", str(report),
                 "--save-mot", str(mot), "-q"]) == 0
    out = capsys.readouterr().out
    assert "HOTA" in out and "all (agnostic)" in out
    r = json.loads(report.read_text())
    (seq,) = load_mot(CLIP)
    again = track_metrics(seq.gt, read_mot(mot / "shapes-01.txt"), frames=seq.frames, names=seq.names)
    assert r["metrics"] == pytest.approx(again["metrics"]) and r["per_class"].keys() == again["per_class"].keys()
    assert r["frames"] == 120 and r["tracker"]["tracker_type"] == "bytetrack" and r["metrics"]["HOTA"] > 0.4
    assert format_tracking_report(r).splitlines()[2].split()[2] == f"{r['metrics']['HOTA']:.4f}"

    demo = run_demo_tracking(tmp_path / "demo", trackers=("bytetrack",), log=lambda _: None)
    row = demo["trackers"]["bytetrack"]
    assert {k: row[k] for k in ("HOTA", "IDF1", "MOTA", "IDSW")} == pytest.approx(
        {k: r["metrics"][k] for k in ("HOTA", "IDF1", "MOTA", "IDSW")})
    assert (tmp_path / "demo/tracking/bytetrack.mp4").stat().st_size > 0
    assert read_mot(row["mot"]).tolist() == read_mot(mot / "shapes-01.txt").tolist()
    assert f"{row['HOTA']:.4f}" in tracking_markdown(demo) and "## Tracking" in tracking_markdown(demo)


def test_eval_cli_tracking_errors(tmp_path, capsys):
    assert main(["eval", DEMO, "--data", str(tmp_path), "--tracker", "botsort"]) == 1
    assert "expected a MOTChallenge sequence folder" in capsys.readouterr().err
    assert main(["eval", DEMO, "--data", str(CLIP), "--tracker", "sort"]) == 1
    err = capsys.readouterr().err.strip()
    assert "tracker must be one of bytetrack, botsort" in err and "\n" not in err


@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
def test_hota_and_idf1_match_ultralytics_tracking(short_clip, kind):
    """Same detector (the demo ONNX), same video: unideploy's tracking scores as Ultralytics' ``track`` (target:
    within 0.02; the tracks agree box for box, so the scores agree to rounding)."""
    pytest.importorskip("ultralytics")
    from track_helpers import ultralytics_mot_rows

    (seq,) = load_mot(short_clip)
    ours = evaluate_tracking(DEMO, short_clip, tracker=kind)["metrics"]
    theirs = track_metrics(seq.gt, ultralytics_mot_rows(DEMO, str(seq.source), kind), frames=seq.frames)["metrics"]
    for key in ("HOTA", "IDF1", "MOTA", "DetA", "AssA"):
        assert abs(ours[key] - theirs[key]) <= 0.005, (key, ours[key], theirs[key])
    assert ours["IDSW"] == theirs["IDSW"] and ours["tracks"] == theirs["tracks"]


def test_eval_recognises_a_mot_layout_without_tracker(short_clip, capsys):
    assert main(["eval", DEMO, "--data", str(short_clip.parent), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bytetrack on 1 sequence(s), 40 frames") and "all (agnostic)" in out
