"""TensorRT: pure parts everywhere (profile shapes, Ultralytics engine header, option checks, missing runtime);
engine build and inference only where tensorrt and a CUDA GPU are present (skipped cleanly otherwise)."""

from __future__ import annotations

import importlib.util
import json

import pytest

import unideploy
from unideploy.core.errors import BackendUnavailableError, InputError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_profile_shapes():
    from unideploy.tools.convert.tensorrt import profile_shapes

    assert profile_shapes([1, 3, 640, 640], (640, 640), batch=None, dynamic=False, extra={}) == ((1, 3, 640, 640),) * 3
    assert profile_shapes([None, 3, None, None], (320, 480), batch=8, dynamic=True, extra={}) == \
        ((1, 3, 320, 480), (8, 3, 320, 480), (16, 3, 320, 480))
    assert profile_shapes([None, 3, 64, 64], (64, 64), batch=4, dynamic=True, extra={"max_batch": 64})[2] == (64, 3, 64, 64)
    with pytest.raises(InputError, match="min_batch <= opt_batch <= max_batch"):
        profile_shapes([None, 3, 64, 64], (64, 64), batch=8, dynamic=True, extra={"max_batch": 4})


def test_ultralytics_engine_header():
    from unideploy.runtime.backends.tensorrt import split_ultralytics_header

    meta = json.dumps({"names": {"0": "a"}, "imgsz": [320, 320]}).encode()
    got, blob = split_ultralytics_header(len(meta).to_bytes(4, "little") + meta + b"\x00ENGINE")
    assert got["imgsz"] == [320, 320] and blob == b"\x00ENGINE"
    assert split_ultralytics_header(b"\x10\x00\x00\x00plain engine bytes...") == ({}, b"\x10\x00\x00\x00plain engine bytes...")


def test_engine_options_checked_before_tensorrt(tmp_path):
    from unideploy.tools.convert import ExportOptions
    from unideploy.tools.convert.tensorrt import onnx_to_engine
    from unideploy.core.spec import ModelSpec

    with pytest.raises(InputError, match="unknown engine option"):
        onnx_to_engine(tmp_path / "m.onnx", ModelSpec(), ExportOptions(extra={"turbo": 1}))
    with pytest.raises(InputError, match="calibration images"):
        onnx_to_engine(tmp_path / "m.onnx", ModelSpec(), ExportOptions(extra={"int8": "1"}))


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_missing_tensorrt_names_the_extra(tmp_path):
    from unideploy.runtime.backends.tensorrt import TensorRTBackend

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x" * 16)
    with pytest.raises(BackendUnavailableError, match=r"unideploy\[tensorrt\]"):
        TensorRTBackend.open(engine)
    assert unideploy.runtime.backends.registry.backend_for_path(engine) == "tensorrt"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed")
def test_engine_matches_onnxruntime(yolo_models, image_dir, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from unideploy.tools.convert import export

    src = yolo_models["yolov8n"]["onnx"]
    engine = export(src, to="engine", out=tmp_path / "m.engine")
    files = sorted(image_dir.iterdir())[:8]
    with unideploy.load(src, conf=0.25) as ref_pred, unideploy.load(engine, backend="tensorrt", conf=0.25) as pred:
        ref, ours = ref_pred(files), pred(files)
        t = pred.session.last_timings
        assert None not in (t.h2d, t.compute, t.d2h)
    from parity import assert_same_detections

    for f, o, r in zip(files, ours, ref):  # TF32 may be used by TensorRT: slightly looser than 1e-3
        assert_same_detections(o, r.xyxy, r.confidence, r.class_id, px=1.0, score_tol=5e-3, where=f.name)
