"""Tracking end to end: settings, Detections.tracker_id, Predictor.track, ``unideploy track`` and its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from track_helpers import shapes_video
from unideploy.cli.main import main
from unideploy.core.errors import InputError, OptionError, SourceError, UnideployError
from unideploy.core.results import Detections
from unideploy.runtime.tracking import TrackerConfig, make_tracker, tracker_config
from unideploy.tools.track import track
from unideploy.tools.track_sinks import mot_lines

DEMO = "src/unideploy/assets/demo/shapes_yolov8.onnx"

BYTETRACK_YAML = """tracker_type: bytetrack
track_high_thresh: 0.25
track_low_thresh: 0.1
new_track_thresh: 0.25
track_buffer: 30
match_thresh: 0.8
fuse_score: True
"""
BOTSORT_YAML = BYTETRACK_YAML.replace("bytetrack", "botsort") + """gmc_method: sparseOptFlow
proximity_thresh: 0.5
appearance_thresh: 0.8
with_reid: False
model: auto
"""


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return shapes_video(tmp_path_factory.mktemp("track") / "shapes.avi", frames=30)


@pytest.mark.parametrize("text,kind", [(BYTETRACK_YAML, "bytetrack"), (BOTSORT_YAML, "botsort")])
def test_ultralytics_tracker_yaml_loads_unchanged(tmp_path, text, kind):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    cfg = tracker_config(str(path))
    assert cfg.tracker_type == kind and cfg.track_buffer == 30 and cfg.fuse_score is True
    assert tracker_config(kind) == cfg  # the built-in defaults are Ultralytics' defaults


def test_installed_ultralytics_yamls_load():
    ul = pytest.importorskip("ultralytics")
    root = Path(ul.__file__).parent / "cfg" / "trackers"
    for kind in ("bytetrack", "botsort"):
        assert tracker_config(str(root / f"{kind}.yaml")) == tracker_config(kind)


@pytest.mark.parametrize("settings,error,message", [
    ({"track_bufer": 30}, OptionError, "track_bufer is not a tracker option; valid: appearance_thresh"),
    ({"track_high_thresh": 1.5}, OptionError, "track_high_thresh must be between 0 and 1, got 1.5"),
    ({"track_buffer": -1}, OptionError, "track_buffer must be a non-negative integer, got -1"),
    ({"track_buffer": 2.5}, OptionError, "track_buffer must be a non-negative integer, got 2.5"),
    ({"fuse_score": "yes"}, OptionError, "fuse_score must be true or false, got 'yes'"),
    ({"tracker_type": "sort"}, OptionError, "tracker_type must be one of bytetrack, botsort, got 'sort'"),
    ({"tracker_type": "botsort", "gmc_method": "orb"}, OptionError, "gmc_method must be one of sparseOptFlow, none"),
    ({"tracker_type": "botsort", "with_reid": True}, OptionError, "with_reid must be false"),
])
def test_bad_tracker_settings_are_one_line_errors(settings, error, message):
    with pytest.raises(error) as e:
        tracker_config("bytetrack", settings)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_tracker_names_and_files(tmp_path):
    with pytest.raises(OptionError, match="tracker must be one of bytetrack, botsort or a tracker YAML"):
        tracker_config("deepsort")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="expected a mapping of tracker settings, got list"):
        tracker_config(str(tmp_path / "list.yaml"))
    with pytest.raises(InputError, match="no such file"):
        tracker_config("bytetrack", str(tmp_path / "missing.yaml"))


def test_detections_carry_tracker_ids():
    d = Detections(np.array([[0, 0, 4, 4], [1, 1, 5, 5]]), np.array([0.9, 0.8]), np.array([0, 1]),
                   tracker_id=np.array([7, 9]))
    assert d[1].tracker_id.tolist() == [9] and d[np.array([True, False])].tracker_id.tolist() == [7]
    assert [r["tracker_id"] for r in d.to_dicts()] == [7, 9]
    assert "tracker_id" not in Detections(d.xyxy, d.confidence, d.class_id).to_dicts()[0]
    with pytest.raises(ValueError, match=r"tracker_id must have shape \(2,\) to match xyxy, got \(3,\)"):
        Detections(d.xyxy, d.confidence, d.class_id, tracker_id=np.arange(3))


def test_tracker_follows_crossing_boxes():
    """Two boxes crossing at constant speed keep their identities; a box that vanishes for 5 frames gets its own back."""
    tracker = make_tracker(TrackerConfig("bytetrack"))
    for f in range(40):
        a = [10 + 5 * f, 50, 40 + 5 * f, 80]
        b = [210 - 5 * f, 52, 240 - 5 * f, 82]
        c = [300, 300, 330, 330]
        boxes = [a, b] + ([c] if not 20 <= f < 25 else [])
        out = tracker.update(Detections(np.array(boxes, float), np.full(len(boxes), 0.9), np.zeros(len(boxes))))
        ids = dict(zip(out.tracker_id.tolist(), out.xyxy[:, 0].tolist()))
        assert sorted(ids) == ([1, 2, 3] if not 20 <= f < 25 else [1, 2])
        assert abs(ids[1] - a[0]) < 3 and abs(ids[2] - b[0]) < 3


def test_predictor_track_and_cli_outputs_agree(video, tmp_path, capsys):
    with unideploy.load(DEMO) as p:
        frames = [out for out in p.track(str(video), "botsort")]
    assert len(frames) == 30 and all(out.ok for out in frames)
    first = set(frames[0].result.tracker_id.tolist())
    assert len(first) >= 4
    seen = [set(out.result.tracker_id.tolist()) for out in frames]
    for tid in first:  # every object of the first frame keeps its identity through the crossings
        assert sum(tid in s for s in seen) >= 15, tid
    assert len(set().union(*seen)) <= 8

    mot, jsonl, mp4 = tmp_path / "t.txt", tmp_path / "t.jsonl", tmp_path / "t.mp4"
    rc = main(["track", DEMO, str(video), "--tracker", "botsort", "--save-mot", str(mot), "--save-jsonl", str(jsonl),
               "--save-video", str(mp4)])
    assert rc == 0
    assert "30 frame(s)" in capsys.readouterr().err
    expected = [line for out in frames for line in mot_lines(out.item.frame + 1, out.result)]
    assert mot.read_text().splitlines() == expected
    rows = [line.split(",") for line in expected]
    assert {r[0] for r in rows} == {str(i) for i in range(1, 31)} and all(len(r) == 9 and r[8] == "-1" for r in rows)
    assert all(1 <= int(r[7]) <= 6 for r in rows)
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [d["tracker_id"] for d in lines[3]["detections"]] == frames[3].result.tracker_id.tolist()
    cap = cv2.VideoCapture(str(mp4))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    cap.release()


def test_library_track_summary_and_tracker_file(video, tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("track_buffer: 5\nnew_track_thresh: 0.5\n")
    s = track(DEMO, str(video), tracker="bytetrack", tracker_config=str(cfg), vid_stride=2)
    assert s.frames == 15 and s.tracker["track_buffer"] == 5 and s.tracks >= 4 and s.fps > 0


def test_track_errors(video, tmp_path, capsys):
    with unideploy.load(DEMO) as p, pytest.raises(OptionError, match="bogus is not a tracker option"):
        p.track(str(video), {"bogus": 1})  # raised at the call, before any frame is read
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(SourceError):
        track(DEMO, str(empty))
    with pytest.raises(UnideployError):
        track(DEMO, "http://127.0.0.1:9/stream.mjpg")
    assert main(["track", DEMO, str(video), "--tracker-config", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--tracker-config expects an existing YAML file" in err and "\n" not in err
