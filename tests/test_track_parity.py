"""Our ByteTrack / BoT-SORT against Ultralytics' trackers fed the same detections: same ids, same boxes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from track_helpers import detection_sequence, shapes_video
from unideploy.core.results import Detections
from unideploy.runtime.tracking import make_tracker, tracker_config
from unideploy.runtime.tracking.gmc import SparseFlowGMC

pytest.importorskip("lap")
ul_trackers = pytest.importorskip("ultralytics.trackers.bot_sort")
from ultralytics.engine.results import Boxes  # noqa: E402
from ultralytics.trackers.byte_tracker import BYTETracker  # noqa: E402
from ultralytics.trackers.utils.gmc import GMC  # noqa: E402

DEMO = "src/unideploy/assets/demo/shapes_yolov8.onnx"


def _compare(kind: str, frames, overrides: dict | None = None) -> int:
    """Run both trackers over ``frames`` [(Detections, image or None)]; assert they agree; tracked boxes compared."""
    cfg = tracker_config(kind, overrides)
    ref = (BYTETracker if kind == "bytetrack" else ul_trackers.BOTSORT)(SimpleNamespace(**cfg.to_dict()))
    ours = make_tracker(cfg)
    compared = 0
    for f, (det, image) in enumerate(frames):
        data = np.concatenate([det.xyxy, det.confidence[:, None], det.class_id[:, None].astype(np.float32)], 1)
        expected = ref.update(Boxes(data, (640, 640)), image).reshape(-1, 8)
        got = ours.update(det, image)
        assert got.tracker_id.tolist() == expected[:, 4].astype(int).tolist(), f"frame {f}"
        np.testing.assert_allclose(got.xyxy, expected[:, :4], atol=1e-3, rtol=0, err_msg=f"frame {f}")
        np.testing.assert_array_equal(got.class_id, expected[:, 6].astype(int))
        np.testing.assert_allclose(got.confidence, expected[:, 5], atol=1e-6)
        # the row each track took from the detections
        np.testing.assert_array_equal(got.confidence, det.confidence[expected[:, 7].astype(int)])
        compared += len(got)
    return compared


@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_tracks_as_ultralytics_on_recorded_detections(kind, seed):
    seq = [(Detections(b, c, k), None) for b, c, k in detection_sequence(seed)]
    assert _compare(kind, seq) > 300


@pytest.mark.parametrize("overrides", [
    {"track_buffer": 3, "match_thresh": 0.6, "fuse_score": False},
    {"track_high_thresh": 0.5, "track_low_thresh": 0.2, "new_track_thresh": 0.6},
])
def test_same_tracks_with_other_settings(overrides):
    seq = [(Detections(b, c, k), None) for b, c, k in detection_sequence(7, frames=80)]
    assert _compare("bytetrack", seq, overrides) > 50
    assert _compare("botsort", seq, {**overrides, "gmc_method": "none"}) > 50


@pytest.fixture(scope="module")
def demo_frames(tmp_path_factory):
    """The demo model's detections on a generated video with camera shake, with the frames (low conf: more boxes)."""
    import unideploy

    video = shapes_video(tmp_path_factory.mktemp("track") / "shapes.avi", frames=30, jitter=3.0)
    with unideploy.load(DEMO, conf=0.05) as p:
        return [(out.result, out.image) for out in p.stream(str(video), keep_images=True)]


@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
def test_same_tracks_as_ultralytics_on_demo_model_video(demo_frames, kind):
    assert _compare(kind, demo_frames) > 60


def test_camera_motion_matches_ultralytics(demo_frames):
    ours, ref = SparseFlowGMC(), GMC("sparseOptFlow")
    for _, image in demo_frames:
        np.testing.assert_allclose(ours.apply(image), ref.apply(image), atol=1e-9)


def _rotated_sequence(seed: int):
    """The recorded sequence's boxes as rotated boxes: each object turns slowly; some are taller than wide (the
    trackers turn those to long-edge form), angles cross the half-turn boundary."""
    from unideploy.core.results import OrientedDetections

    rng = np.random.default_rng(seed)
    out = []
    for f, (b, c, k) in enumerate(detection_sequence(seed, frames=80)):
        xywh = np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1)
        angle = (0.05 * f + 0.4 * np.arange(len(b)) + rng.normal(0, 0.02, len(b))) % np.pi - np.pi / 4
        out.append(OrientedDetections.from_xywhr(np.concatenate([xywh, angle[:, None]], 1).astype(np.float32), c, k))
    return out


@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
@pytest.mark.parametrize("seed", [0, 4])
def test_rotated_boxes_track_as_ultralytics_obb(kind, seed):
    """Oriented detections: matched on probabilistic IoU, angle carried along, same ids and boxes as Ultralytics'
    trackers fed its ``OBB`` results."""
    from ultralytics.engine.results import OBB

    cfg = tracker_config(kind, {"gmc_method": "none"} if kind == "botsort" else None)
    ref = (BYTETracker if kind == "bytetrack" else ul_trackers.BOTSORT)(SimpleNamespace(**cfg.to_dict()))
    ours = make_tracker(cfg)
    compared = 0
    for f, det in enumerate(_rotated_sequence(seed)):
        data = np.concatenate([det.obb.xywhr, det.confidence[:, None], det.class_id[:, None].astype(np.float32)], 1)
        expected = ref.update(OBB(data, (640, 640))).reshape(-1, 9)
        got = ours.update(det)
        assert got.tracker_id.tolist() == expected[:, 5].astype(int).tolist(), f"frame {f}"
        np.testing.assert_allclose(got.obb.xywhr, expected[:, :5], atol=1e-3, rtol=0, err_msg=f"frame {f}")
        np.testing.assert_array_equal(got.confidence, det.confidence[expected[:, 8].astype(int)])
        np.testing.assert_allclose(got.xyxy, got.obb.xyxy)  # the bounds of the tracked rotated box
        compared += len(got)
    assert compared > 150
