"""Live streams: reconnection after the server is killed and restarted, drop policies, stall vs end."""

from __future__ import annotations

import threading
import time

import pytest

from stream_server import MjpegServer, frame_number
from unideploy.cli.main import main
from unideploy.core.errors import OptionError, SourceError
from unideploy.core.streams import LiveSource, StreamOptions

DEMO = "src/unideploy/assets/demo/shapes_yolov8.onnx"
FAST = {"backoff": 0.1, "backoff_max": 0.4, "read_timeout": 2.0, "open_timeout": 2.0}


def _later(*steps):
    """Run (delay, action) steps on a thread."""
    def go():
        for delay, action in steps:
            time.sleep(delay)
            action()
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_reconnects_after_server_killed_and_restarted():
    srv = MjpegServer(fps=40).start()
    src = LiveSource(srv.url, StreamOptions(policy="every", reconnect=6, **FAST))
    marks = {}
    t = _later((0.8, lambda: (marks.setdefault("killed", srv.counter), srv.stop())), (0.5, srv.start),
               (1.6, srv.stop))  # generous windows: CI machines are shared and slow
    t0 = time.monotonic()
    items = [(item.frame, frame_number(item.load())) for item in src]
    t.join()
    assert time.monotonic() - t0 < 15
    stats = src.stats
    assert stats.reconnects == 1, stats.describe()
    assert [f for f, _ in items] == list(range(len(items)))  # "every": no frame dropped by the reader
    before = [n for _, n in items if n < marks["killed"]]
    after = [n for _, n in items if n > marks["killed"] + 1]
    assert len(before) > 5 and len(after) > 5  # frames from both server lives
    assert "6 reconnect attempt(s) failed" in stats.end and stats.ended_early
    assert f"{len(items)} frame(s) read" in stats.describe()


def test_latest_policy_drops_frames_a_slow_consumer_cannot_take():
    srv = MjpegServer(fps=60).start()
    try:
        src = LiveSource(srv.url, StreamOptions(policy="latest", **FAST))
        frames = []
        for item in src:
            frames.append(item.frame)
            time.sleep(0.06)
            if len(frames) == 15:
                break  # closing the iteration stops the reader thread
        assert src.stats.dropped > 0 and frames[-1] - frames[0] > len(frames)
        deadline = time.monotonic() + 3
        while any(t.name == "unideploy-live-source" for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(t.name == "unideploy-live-source" for t in threading.enumerate())
    finally:
        srv.stop()


@pytest.mark.parametrize("how,expected", [("pause", "stalled (no frame for 0.6 s)"), ("stop", "ended")])
def test_stall_and_end_are_told_apart(how, expected):
    srv = MjpegServer(fps=40).start()
    try:
        src = LiveSource(srv.url, StreamOptions(policy="every", reconnect=0, read_timeout=0.6))
        _later((0.5, srv.paused.set if how == "pause" else srv.stop))
        n = sum(1 for _ in src)
        assert n > 3 and src.stats.end.startswith(f"the stream {expected} after {n} frame(s)"), src.stats.end
    finally:
        srv.paused.clear()
        srv.stop()


def test_unreachable_stream_and_bad_options():
    with pytest.raises(SourceError, match="could not open it"):
        list(LiveSource("http://127.0.0.1:9/none.mjpg", StreamOptions(open_timeout=1.0)))
    with pytest.raises(OptionError, match="policy must be one of latest, every, got 'oldest'"):
        StreamOptions(policy="oldest")
    with pytest.raises(OptionError, match="read_timeout must be a positive number of seconds"):
        StreamOptions(read_timeout=0)


def test_track_cli_on_a_live_stream_that_drops(tmp_path, capsys):
    srv = MjpegServer(fps=30).start()
    t = _later((1.5, srv.stop), (0.4, srv.start), (1.5, srv.stop))
    mot = tmp_path / "live.txt"
    rc = main(["track", DEMO, srv.url, "--reconnect", "3", "--drop-policy", "latest", "--save-mot", str(mot)])
    t.join()
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "1 reconnection(s)" in err and "3 reconnect attempt(s) failed" in err
    frames = int(err.split(" frame(s), ")[0].rsplit("\n", 1)[-1])
    assert frames > 10 and mot.exists()
