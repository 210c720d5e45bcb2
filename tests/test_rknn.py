"""Rockchip RKNN: ``export --to rknn`` and the ``rknn`` backend, driven through the isolated-toolkit worker
protocol against rknn-toolkit2 / rknn-toolkit-lite2 doubles (tests/doubles). The real toolkit run skips
cleanly unless one is set up (UNIDEPLOY_RKNN_PYTHON or the private venv)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import unideploy
from unideploy.tools.convert import export as convert_export
from unideploy.core.errors import BackendError, BackendUnavailableError, InputError

DOUBLES = Path(__file__).resolve().parent / "doubles"


@pytest.fixture
def toolkit_double(monkeypatch):
    """The worker subprocess runs this Python with the rknn-toolkit2 double importable."""
    monkeypatch.setenv("UNIDEPLOY_RKNN_PYTHON", sys.executable)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(DOUBLES), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("DOUBLE_RKNN_FAIL", raising=False)
    return sys.executable


def test_options_are_checked(tmp_path, toolkit_double):
    from unideploy.tools.convert import ExportOptions
    from unideploy.tools.convert.rknn import onnx_to_rknn
    from unideploy.core.spec import ModelSpec

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    spec = ModelSpec(imgsz=(64, 64))
    for extra, msg in [({"target": "rk9999"}, "target must be one of"), ({"dtype": "int4"}, "fp16 or int8"),
                       ({"dtype": "int8"}, "calibration images"), ({"speed": 1}, "unknown rknn option")]:
        with pytest.raises(InputError, match=msg):
            onnx_to_rknn(onnx, spec, ExportOptions(base=tmp_path / "m", extra=extra))


def test_missing_toolkit_says_how_to_set_it_up(tmp_path, monkeypatch):
    from unideploy.tools.convert.rknn import toolkit_python

    monkeypatch.delenv("UNIDEPLOY_RKNN_PYTHON", raising=False)
    monkeypatch.setenv("UNIDEPLOY_RKNN_VENV", str(tmp_path / "venv"))
    with pytest.raises(BackendUnavailableError, match="install=1.*UNIDEPLOY_RKNN_PYTHON"):
        toolkit_python(install=False)
    assert not (tmp_path / "venv").exists()  # nothing installed without being asked


def test_rknn_config_reproduces_the_spec_normalisation():
    from unideploy.tools.convert.rknn import rknn_config
    from unideploy.core.spec import ModelSpec

    assert rknn_config(ModelSpec()) == ([[0.0, 0.0, 0.0]], [[255.0, 255.0, 255.0]])
    mean, std = rknn_config(ModelSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    assert mean == [[123.675, 116.28, 103.53]] and std == [[58.395, 57.12, 57.375]]


def test_rknn_inputs_take_the_in_model_path_with_the_same_bytes():
    """RKNN, AIPP and OpenVINO share one host path (``in_model``): a sidecar from before the field (NHWC uint8
    RGB, read through ``RknnSession.fuse_preprocess``) feeds exactly the bytes it fed before."""
    from unideploy.runtime.backends.in_model import in_model_spec
    from unideploy.runtime.backends.rknn import RknnSession
    from unideploy.runtime.families import get_adapter
    from unideploy.core.spec import ModelSpec

    legacy = ModelSpec(imgsz=(64, 96), layout="nhwc", input_dtype="uint8")
    fused = RknnSession.fuse_preprocess(None, legacy)  # type: ignore[arg-type]  (uses no session state)
    assert fused == in_model_spec(legacy, "rknn", "rgb") and RknnSession.fuse_preprocess(None, fused) is None
    imgs = [np.random.default_rng(i).integers(0, 256, (64, 96, 3), np.uint8) for i in range(2)]
    old, new = get_adapter("yolo")(legacy), get_adapter("yolo")(fused)
    a, b = old.to_batch(imgs), new.to_batch(imgs)
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (2, 64, 96, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b[0], imgs[0][..., ::-1])  # RGB, as the model's mean/std expect
    bgr = get_adapter("yolox")(ModelSpec(imgsz=(64, 96), family="yolox"))
    assert RknnSession.fuse_preprocess(None, bgr.spec).in_model_order == "bgr"  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_export_then_simulate_matches_onnxruntime(yolo_models, image_dir, tmp_path, toolkit_double, dtype):
    src = yolo_models["yolov8n"]["onnx"]
    extra = {"calib": str(image_dir), "calib_count": 8} if dtype == "int8" else {}
    out = convert_export(src, to="rknn", out=tmp_path / "yolov8n.rknn", target="rk3588", dtype=dtype, **extra)
    assert out.is_file() and (tmp_path / "yolov8n_rknn.onnx").is_file()
    spec = unideploy.read_spec(out)
    assert spec.layout == "nhwc" and spec.input_dtype == "uint8" and spec.extra["rknn"]["dtype"] == dtype
    assert spec.in_model == "rknn" and spec.in_model_order == "rgb"  # preprocessing in the model, as AIPP / OpenVINO
    files = sorted(image_dir.iterdir())[:8]
    with unideploy.load(src, conf=0.25) as ref_pred:
        ref = ref_pred(files)
    with unideploy.load(out, backend="rknn", conf=0.25) as pred:
        assert pred.session.mode == "simulator"
        assert pred.session.inputs[0].shape == (1, 320, 320, 3) and pred.spec.in_model == "rknn"
        ours = pred(files)
    # fp16 outputs: boxes near the threshold may flip; 98% of ORT's boxes must be found within 1 px. INT8: the
    # double quantizes each output to 8 bits; the head's Concat is split off (box pixels and 0-1 scores get
    # their own scales; one shared scale would zero every score), so 90% are found within 2 model-input pixels
    # (a 1.25 px quantization step on 0-320 box coordinates, scaled back to the image).
    if dtype == "int8":
        assert len(spec.extra["rknn"]["split_outputs"]) == 2 and spec.extra["rknn"]["concat_axis"] == 1
    found = total = 0
    for o, r in zip(ours, ref):
        total += len(r)
        px = 1.0 if dtype == "fp16" else 2.0 * max(r.image_shape) / 320
        if len(o) and len(r):
            close = (np.abs(o.xyxy[:, None] - r.xyxy[None]).max(-1) <= px) & (o.class_id[:, None] == r.class_id[None])
            found += int(close.any(0).sum())
    assert total > 20 and found >= (0.98 if dtype == "fp16" else 0.90) * total, f"{found}/{total}"


@pytest.mark.slow
def test_board_runtime_with_rknnlite(yolo_models, image_dir, tmp_path, toolkit_double, monkeypatch, request):
    src = yolo_models["yolov8n"]["onnx"]
    out = convert_export(src, to="rknn", out=tmp_path / "m.rknn", target="rk3588")
    monkeypatch.syspath_prepend(str(DOUBLES))
    for name in [m for m in sys.modules if m.startswith(("rknnlite", "rknn_model"))]:
        monkeypatch.delitem(sys.modules, name)
    # find_spec("rknnlite") consults sys.modules: a leaked double would put later tests in board mode
    request.addfinalizer(lambda: [sys.modules.pop(m) for m in list(sys.modules) if m.startswith(("rknnlite", "rknn_model"))])
    from rknnlite.api import RKNNLite

    RKNNLite.calls.clear()
    with unideploy.load(out, backend="rknn", device="npu:0,1,2", conf=0.25) as pred:
        assert pred.session.mode == "board"
        dets = pred(sorted(image_dir.iterdir())[:2])
    assert ("init_runtime", 7) in RKNNLite.calls and RKNNLite.calls[-1] == "release"
    assert all(d.image_shape for d in dets)


@pytest.mark.slow
def test_toolkit_failures_name_the_call(yolo_models, tmp_path, toolkit_double, monkeypatch):
    monkeypatch.setenv("DOUBLE_RKNN_FAIL", "build")
    with pytest.raises(BackendError, match=r"rknn.build failed \(ret -1\)"):
        convert_export(yolo_models["yolov8n"]["onnx"], to="rknn", out=tmp_path / "m.rknn", target="rk3588")


@pytest.mark.slow
def test_real_toolkit_simulator(yolo_models, image_dir, tmp_path):
    """With a real rknn-toolkit2 (UNIDEPLOY_RKNN_PYTHON or the private venv): fp16 simulator vs ONNX Runtime."""
    from unideploy.tools.convert.rknn import toolkit_python

    try:
        python = toolkit_python(install=False)
    except BackendUnavailableError:
        pytest.skip("rknn-toolkit2 is not set up here")
    import subprocess

    if subprocess.run([python, "-c", "import rknn.api"], capture_output=True).returncode != 0:
        pytest.skip("UNIDEPLOY_RKNN_PYTHON has no rknn-toolkit2")
    src = yolo_models["yolov8n"]["onnx"]
    out = convert_export(src, to="rknn", out=tmp_path / "m.rknn", target="rk3588", dtype="fp16")
    files = sorted(image_dir.iterdir())[:4]
    with unideploy.load(src, conf=0.25) as ref_pred, unideploy.load(out, backend="rknn", conf=0.25) as pred:
        ref, ours = ref_pred(files), pred(files)
    assert sum(len(o) for o in ours) > 0
    matched = sum(min(len(o), len(r)) for o, r in zip(ours, ref))
    assert matched > 0.5 * sum(len(r) for r in ref)


@pytest.mark.slow
def test_compare_feeds_an_nhwc_uint8_candidate_its_own_encoding(yolo_models, image_dir, tmp_path, toolkit_double):
    """An .rknn takes the letterboxed image as uint8 NHWC (normalisation inside): compare's tensor level gives it
    the same letterboxed image in that encoding instead of failing on the float NCHW tensor."""
    src = yolo_models["yolov8n"]["onnx"]
    out = convert_export(src, to="rknn", out=tmp_path / "m.rknn", target="rk3588", dtype="fp16")
    res = unideploy.compare(str(src), f"{out}@rknn", image_dir, samples=3)
    assert any("own input encoding" in n for n in res.notes), res.notes
    assert not any(c.level == "tensor" and c.name == "input" for c in res.checks)
    (t,) = res.tensors
    assert t.shape == (1, 84, 2100) and t.to_dict()["cosine_min"] > 0.999


@pytest.mark.parametrize("family", ["yolo", "yolov5", "yolox", "nanodet", "classify"])
def test_calibration_set_uses_the_family_preprocessing(family, image_dir, tmp_path):
    """INT8 calibration images are resized as the family's own adapter resizes them at prediction."""
    from unideploy.core.sources import Source
    from unideploy.core.spec import ModelSpec
    from unideploy.runtime.backends.rknn_toolkit import calibration_set
    from unideploy.runtime.families import get_adapter

    spec = ModelSpec(task="classify" if family == "classify" else "detect", family=family, imgsz=(64, 96))
    files = calibration_set(spec, image_dir, 3, tmp_path).read_text().split()
    adapter = get_adapter(family)(spec)
    images = [item.load() for _, item in zip(range(3), Source(image_dir))]
    assert len(files) == len(images) == 3
    for f, img in zip(files, images):
        resized, _ = adapter.resize(img)
        want = resized[..., ::-1] if adapter.spec.channel_order == "rgb" else resized
        np.testing.assert_array_equal(np.load(f), want.transpose(2, 0, 1)[None])
