"""Video and streams: annotated video + JSON lines from predict, corrupt frames skipped and counted, early end
reported; one predictor shared by 4 threads gives the sequential results."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from conftest import has_module, scene
from unideploy.cli.main import main
from unideploy.core.sources import Source, VideoStats, is_stream_url

N_FRAMES = 12
SIZE = (240, 320)  # h, w


def make_video(path: Path, n: int = N_FRAMES, fourcc: str = "MJPG", fps: float = 10.0) -> Path:
    """A short video of moving cluttered scenes (MJPG in .avi: every frame is its own JPEG)."""
    rng = np.random.default_rng(3)
    base = scene(rng, SIZE[0], SIZE[1] * 2)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (SIZE[1], SIZE[0]))
    assert w.isOpened()
    for i in range(n):
        w.write(np.ascontiguousarray(base[:, i * 12 : i * 12 + SIZE[1]]))
    w.release()
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def jpeg_offsets(data: bytes) -> list[int]:
    """Start of every JPEG (SOI + marker) in an MJPG AVI: one per frame."""
    out, i = [], data.find(b"\xff\xd8\xff")
    while i >= 0:
        out.append(i)
        i = data.find(b"\xff\xd8\xff", i + 3)
    return out


@pytest.fixture(scope="module")
def model(yolo_models) -> Path:
    return yolo_models["yolov8n"]["onnx"]


@pytest.fixture()
def video(tmp_path) -> Path:
    return make_video(tmp_path / "clip.avi")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same(jrec: dict, det) -> None:
    got = jrec["detections"]
    assert len(got) == len(det)
    np.testing.assert_allclose([g["xyxy"] for g in got] or np.zeros((0, 4)), det.xyxy, atol=1e-4)
    assert [g["class_id"] for g in got] == det.class_id.tolist()


@pytest.mark.slow
def test_video_to_annotated_video_and_jsonl(model, video, tmp_path, capsys):
    out_video, lines = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    assert (
        main(
            [
                "predict",
                str(model),
                str(video),
                "--save-video",
                str(out_video),
                "--save-jsonl",
                str(lines),
                "--conf",
                "0.2",
            ]
        )
        == 0
    )
    assert "video: 12 frame(s) decoded, 0 corrupt or dropped frame(s) skipped" in capsys.readouterr().err
    frames = read_frames(video)
    assert len(frames) == N_FRAMES
    with unideploy.load(model, conf=0.2) as pred:
        ref = pred(frames)
    recs = read_jsonl(lines)
    assert [r["frame"] for r in recs] == list(range(N_FRAMES))
    assert [r["name"] for r in recs][:2] == ["clip.avi#000000", "clip.avi#000001"]
    for r, d in zip(recs, ref):
        same(r, d)
    assert sum(len(d) for d in ref) > N_FRAMES, "too few boxes for the comparison to mean anything"
    annotated = read_frames(out_video)
    assert len(annotated) == N_FRAMES and annotated[0].shape == (*SIZE, 3)
    cap = cv2.VideoCapture(str(out_video))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0, abs=0.01)
    cap.release()
    # the annotated frames carry the boxes: they differ from the input where boxes are drawn
    assert np.abs(annotated[0].astype(int) - frames[0].astype(int)).mean() > 1.0
    assert not list(tmp_path.glob(".*partial*")), "temporary video left behind"


@pytest.mark.slow
def test_vid_stride_and_save_img_writes_a_video(model, video, tmp_path):
    lines = tmp_path / "f.jsonl"
    assert (
        main(
            [
                "predict",
                str(model),
                str(video),
                "--vid-stride",
                "3",
                "--save-img",
                str(tmp_path / "img"),
                "--save-jsonl",
                str(lines),
                "--quiet",
            ]
        )
        == 0
    )
    assert [r["frame"] for r in read_jsonl(lines)] == [0, 3, 6, 9]
    assert [p.name for p in (tmp_path / "img").iterdir()] == ["clip.mp4"]
    out = read_frames(tmp_path / "img" / "clip.mp4")
    assert len(out) == 4
    cap = cv2.VideoCapture(str(tmp_path / "img" / "clip.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0 / 3, abs=0.01)
    cap.release()


@pytest.mark.slow
def test_corrupt_frames_are_skipped_and_counted(model, video, tmp_path, capsys):
    data = bytearray(video.read_bytes())
    soi = jpeg_offsets(bytes(data))
    assert len(soi) == N_FRAMES
    for k in (4, 7):  # wipe the first half of frames 4 and 7
        n = (soi[k + 1] - soi[k]) // 2
        data[soi[k] : soi[k] + n] = b"\0" * n
    bad = tmp_path / "bad.avi"
    bad.write_bytes(bytes(data))
    src = Source(bad)
    names = [item.frame for item in src]
    assert names == [i for i in range(N_FRAMES) if i not in (4, 7)]
    assert src.stats == VideoStats(
        decoded=N_FRAMES - 2, skipped=2, expected=N_FRAMES, last_frame=N_FRAMES - 1, ended_early=False, fps=10.0
    )
    lines = tmp_path / "f.jsonl"
    assert main(["predict", str(model), str(bad), "--save-jsonl", str(lines), "--quiet"]) == 0
    assert "video: 10 frame(s) decoded, 2 corrupt or dropped frame(s) skipped" in capsys.readouterr().err
    recs = read_jsonl(lines)
    assert [r["frame"] for r in recs] == names
    good = read_frames(video)
    with unideploy.load(model) as pred:
        for r in recs:  # the frames that survived are the original ones
            same(r, pred(good[r["frame"]]))


@pytest.mark.slow
def test_truncated_video_reports_early_end(model, video, tmp_path, capsys):
    data = video.read_bytes()
    soi = jpeg_offsets(data)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: soi[8] + 200])  # frames 0..7 complete, frame 8 cut short, 9..11 gone
    src = Source(cut)
    assert [item.frame for item in src] == list(range(8))
    assert src.stats.ended_early and src.stats.expected == N_FRAMES and src.stats.decoded == 8
    assert "ended early after frame 8 of 12 expected" in src.stats.describe()
    lines = tmp_path / "f.jsonl"
    assert main(["predict", str(model), str(cut), "--save-jsonl", str(lines), "--quiet"]) == 0
    assert "the stream ended early after frame 8 of 12 expected" in capsys.readouterr().err
    assert len(read_jsonl(lines)) == 8


def test_stream_urls_and_video_sink_errors(tmp_path):
    assert is_stream_url("rtsp://cam.local/stream1") and is_stream_url("http://host:8080/video")
    assert not is_stream_url("http://host/a.jpg") and not is_stream_url("clip.mp4")
    s = Source("rtsp://127.0.0.1:9/none")
    assert s.is_video and len(s) == 0
    from unideploy.core.errors import InputError
    from unideploy.core.sinks import VideoSink

    with pytest.raises(InputError, match=r"out\.gif: expected a video file name ending in \.mp4"):
        VideoSink(tmp_path / "out.gif")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_one_predictor_four_threads_equals_sequential(yolo_models, image_dir, backend):
    if backend == "openvino" and not has_module("openvino"):
        pytest.skip("openvino not installed")
    model = yolo_models["yolo11n"]["onnx" if backend == "onnxruntime" else "openvino"]
    files = sorted(image_dir.iterdir())
    with unideploy.load(model, backend=backend, conf=0.05) as pred:
        ref = [pred(f) for f in files]
        results: dict[int, list] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def work(k: int) -> None:
            try:
                barrier.wait()
                order = list(range(len(files)))[k:] + list(range(len(files)))[:k]  # each thread its own order
                out = {}
                for i in order:
                    out[i] = pred(files[i])
                out_stream = {o.item.index: o.result for o in pred.stream(files)}  # streams too, concurrently
                results[k] = [(out[i], out_stream[i]) for i in range(len(files))]
            except BaseException as e:  # noqa: BLE001 - surfaced below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(results) == 4
    for k, res in results.items():
        for i, (a, b) in enumerate(res):
            for d in (a, b):
                np.testing.assert_array_equal(d.xyxy, ref[i].xyxy, err_msg=f"thread {k} image {files[i].name}")
                np.testing.assert_array_equal(d.confidence, ref[i].confidence)
                np.testing.assert_array_equal(d.class_id, ref[i].class_id)


def test_video_summary_times_decoding(tmp_path):
    """A video's frames are decoded by the reader, not per item: the summary's decode time is the reader's
    (it said 0.0 ms before), per decoded frame."""
    demo = Path(unideploy.__file__).parent / "assets/demo/shapes_yolov8.onnx"
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    rng = np.random.default_rng(5)
    for _ in range(12):
        writer.write(scene(rng, 480, 640))
    writer.release()
    s = unideploy.predict(demo, clip, vid_stride=2)
    assert s.video.decoded == 12 and s.images == 6
    assert s.times["decode"] > 0 and s.times["decode"] == pytest.approx(s.video.decode_seconds / 12)
    t0 = time.perf_counter()
    assert len(read_frames(clip)) == 12
    alone = (time.perf_counter() - t0) / 12  # OpenCV alone, for scale
    assert alone / 20 < s.times["decode"] < alone * 20 + 0.05
