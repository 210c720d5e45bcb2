"""The Ray Serve tracking endpoint (apps/serving_track.py): a video in, one NDJSON line per tracked frame out."""

from __future__ import annotations

import json

import numpy as np
import pytest

import unideploy
from track_helpers import shapes_video
from unideploy.apps.serving_track import track_lines, video_from_upload
from unideploy.core.errors import RequestError
from unideploy.testing import free_port

DEMO = "src/unideploy/assets/demo/shapes_yolov8.onnx"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return shapes_video(tmp_path_factory.mktemp("serve_track") / "shapes.avi", frames=20)


@pytest.fixture(scope="module")
def expected(video):
    """Per frame (1-based): the tracker ids and boxes of ``Predictor.track`` on the same video."""
    with unideploy.load(DEMO) as p:
        return [(out.item.frame + 1, out.result.tracker_id.tolist(), out.result.xyxy.tolist())
                for out in p.track(str(video), "botsort")]


def _check_lines(lines: list[dict], expected: list) -> None:
    *frames, last = lines
    assert last["summary"]["frames"] == len(expected) == 20 and last["summary"]["tracker"] == "botsort"
    assert last["summary"]["failed"] == 0
    assert last["summary"]["tracks"] == len({t for _, ids, _ in expected for t in ids})
    for got, (frame, ids, boxes) in zip(frames, expected):
        assert got["frame"] == frame and [d["tracker_id"] for d in got["detections"]] == ids
        np.testing.assert_allclose(np.array([d["xyxy"] for d in got["detections"]]).reshape(-1, 4),
                                   np.array(boxes).reshape(-1, 4), atol=1e-4)


def test_track_lines_are_predictor_track(video, expected):
    with unideploy.load(DEMO) as p:
        lines = [json.loads(b) for b in track_lines(p, video, "botsort")]
        _check_lines(lines, expected)
        bad = [json.loads(b) for b in track_lines(p, video.parent / "missing.avi")]
    assert len(bad) == 1 and "error" in bad[0]


@pytest.mark.parametrize("ctype,body,status,match", [
    ("image/png", b"x", 415, "expected a video body"),
    ("video/mp4", b"", 400, "got an empty body"),
    ("multipart/form-data; boundary=x", b"--x--", 415, "expected a video body"),
])
def test_bad_uploads(ctype, body, status, match):
    with pytest.raises(RequestError, match=match) as e:
        video_from_upload(ctype, body)
    assert e.value.status == status


@pytest.mark.slow
def test_serve_streams_tracked_frames(video, expected):
    pytest.importorskip("ray.serve")
    requests = pytest.importorskip("requests")
    from ray import serve

    from unideploy.apps import distributed
    from unideploy.apps.serving_track import build_track_app

    ray = distributed.init(num_cpus=2)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_track_app(DEMO, max_upload_mb=1), name="unideploy-track", route_prefix="/track")
        url = f"http://127.0.0.1:{port}/track"
        body = video.read_bytes()
        with requests.post(url, params={"tracker": "botsort"}, data=body, stream=True, timeout=300,
                           headers={"Content-Type": "video/x-msvideo"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in r.iter_lines() if line]
        _check_lines(lines, expected)
        assert requests.get(url, timeout=60).json()["trackers"] == ["bytetrack", "botsort"]
        for params, data, ctype, status, match in [
            ({"tracker": "sort"}, body, "video/mp4", 400, "tracker must be bytetrack or botsort"),
            ({"conf": "2"}, body, "video/mp4", 400, "conf must be a number between 0 and 1"),
            ({}, b"not a video", "video/mp4", 400, "expected a video with frames"),
            ({}, b"\0" * (1024 * 1024 + 1), "video/mp4", 413, "over the limit"),
            ({}, body, "image/jpeg", 415, "expected a video body"),
        ]:
            r = requests.post(url, params=params, data=data, headers={"Content-Type": ctype}, timeout=120)
            assert r.status_code == status and match in r.json()["error"], (r.status_code, r.text)
    finally:
        serve.shutdown()
        ray.shutdown()
