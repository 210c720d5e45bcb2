"""Ascend AIPP (``export --to om --option aipp=true``): the AIPP config, ATC's checks of it, and predictions through
the ascend / acl backends equal to the float path.

The fake ``atc`` (tests/doubles/fake_atc.py) parses the config against ATC's documented AIPP fields and records it
in the fake OM, which then declares a uint8 NHWC input and applies AIPP (R/B swap, ``(x - mean_chn - min_chn) *
var_reci_chn`` with float16 coefficients) before the network. Not run on Ascend hardware.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from parity import assert_same_detections
from test_ascend import DOUBLES, SOC, doubles, fake_atc, ort_run, tiny_onnx  # noqa: F401  (fixtures)
from unideploy.core.errors import InputError
from unideploy.core.spec import ModelSpec
from unideploy.runtime.backends.in_model import aipp_config, aipp_fields
from unideploy.tools.convert import export as convert_export

DEMO = Path(unideploy.__file__).parent / "assets" / "demo"
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@pytest.mark.parametrize("spec", [
    ModelSpec(imgsz=(320, 320)),                                        # YOLO: RGB, x / 255
    ModelSpec(imgsz=(224, 224), **IMAGENET),                            # ImageNet mean / std
    ModelSpec(imgsz=(416, 416), channel_order="bgr", scale=1.0),        # YOLOX: BGR 0-255
])
def test_aipp_fields_compute_the_float_path(spec):
    f = aipp_fields(spec, *spec.imgsz)
    assert f["aipp_mode"] == "static" and f["input_format"] == "RGB888_U8" and f["csc_switch"] is False
    assert (f["src_image_size_h"], f["src_image_size_w"]) == spec.imgsz
    assert f["rbuv_swap_switch"] is (spec.channel_order == "rgb")  # the host feeds the decoded BGR image
    x = np.arange(256, dtype=np.float64)
    for c in range(3):
        assert isinstance(f[f"mean_chn_{c}"], int) and 0 <= f[f"mean_chn_{c}"] <= 255 and 0 <= f[f"min_chn_{c}"] < 1
        aipp = (x - f[f"mean_chn_{c}"] - f[f"min_chn_{c}"]) * f[f"var_reci_chn_{c}"]
        host = (x * spec.scale - spec.mean[c]) / spec.std[c]
        np.testing.assert_allclose(aipp, host, rtol=0, atol=1e-9)
    text = aipp_config(f)
    assert text.startswith("aipp_op {\n    aipp_mode : static\n") and text.endswith("}")


def _fake_aipp():
    sys.path.insert(0, str(DOUBLES))
    try:
        import fake_aipp
    finally:
        sys.path.remove(str(DOUBLES))
    return fake_aipp


@pytest.mark.parametrize("body, message", [
    ("aipp_mode : static\n input_format : RGB888_U8\n mean_chn_0 : 256", "mean_chn_0 = 256 is outside its range"),
    ("aipp_mode : static\n input_format : RGB888_U8\n var_reci_chn_0 : 70000.0", "var_reci_chn_0 = 70000.0 is outside"),
    ("aipp_mode : static\n input_format : RGB888_U8\n mean_chn_1 : 1.5", "mean_chn_1 must be an integer"),
    ("aipp_mode : static\n input_format : RGB888_U8\n csc_switch : 1", "csc_switch must be true or false"),
    ("aipp_mode : static\n input_format : BGR888_U8", "input_format 'BGR888_U8' is not one of"),
    ("aipp_mode : static\n input_format : RGB888_U8\n mean_chn : 0", "unknown AIPP field 'mean_chn'"),
    ("aipp_mode : static\n aipp_mode : static", "given twice"),
    ("input_format : RGB888_U8", "aipp_mode is required"),
    ("aipp_mode : static", "input_format is required for static AIPP"),
    ("aipp_mode : static\n input_format : YUV420SP_U8\n src_image_size_w : 321", "must be even for YUV420SP_U8"),
])
def test_the_double_checks_aipp_files_as_atc_documents_them(body, message):
    fa = _fake_aipp()
    with pytest.raises(fa.AippError, match=message):
        fa.parse_aipp("aipp_op {\n" + body + "\n}\n")
    with pytest.raises(fa.AippError, match="not closed"):
        fa.parse_aipp("aipp_op {\n aipp_mode : static\n")
    ok = fa.parse_aipp("# a comment\naipp_op {\n aipp_mode : static  # mode\n input_format : RGB888_U8\n}\n")
    assert ok == [{"aipp_mode": "static", "input_format": "RGB888_U8"}]


def test_fake_atc_refuses_a_bad_aipp_file(tiny_onnx, tmp_path):  # noqa: F811  (fixtures of test_ascend)
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("aipp_op {\n aipp_mode : static\n input_format : RGB888_U8\n src_image_size_w : 64\n}\n")
    res = subprocess.run([sys.executable, str(DOUBLES / "fake_atc.py"), f"--model={tiny_onnx}", "--framework=5",
                          f"--output={tmp_path / 'm'}", f"--soc_version={SOC}", "--input_shape=images:1,3,32,32",
                          f"--insert_op_conf={cfg}"], capture_output=True, text=True)
    assert res.returncode == 1 and "src_image_size_w = 64 does not match the model input (32)" in res.stderr


def test_aipp_om_applies_mean_and_std(doubles, fake_atc, tiny_onnx, tmp_path):  # noqa: F811  (fixtures of test_ascend)
    """The tiny conv model with ImageNet normalisation: the AIPP OM on uint8 BGR == ONNX on the float input."""
    om = convert_export(tiny_onnx, to="om", out=tmp_path / "t.om", imgsz=32, soc=SOC, aipp=True,
                        spec={**IMAGENET, "channel_order": "rgb"})
    side = json.loads((tmp_path / "t.unideploy.json").read_text())
    assert side["in_model"] == "aipp" and side["in_model_order"] == "bgr" and side["layout"] == "nhwc"
    assert side["input_dtype"] == "uint8" and side["mean"] == list(IMAGENET["mean"])
    assert side["extra"]["om"]["aipp"]["mean_chn_0"] == 123 and "--insert_op_conf=" in side["extra"]["om"]["atc_command"]
    assert (tmp_path / "t_aipp.cfg").read_text().startswith("aipp_op {")
    img = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), np.uint8)  # BGR, as decoded
    ref = ort_run(tiny_onnx, ((img[..., ::-1].transpose(0, 3, 1, 2) / 255.0 - np.array(IMAGENET["mean"])[:, None, None])
                              / np.array(IMAGENET["std"])[:, None, None]).astype(np.float32))
    from unideploy.runtime.backends.registry import get_backend

    with get_backend("ascend").open(om, "0") as s:
        assert s.inputs[0].dtype == np.uint8 and s.inputs[0].shape == (1, 32, 32, 3)
        out = s.run(img)[0]
    np.testing.assert_allclose(out, ref, atol=2e-4)  # float16 AIPP coefficients: ~1e-4 on sigmoid outputs


def test_aipp_option_errors(tiny_onnx, tmp_path):  # noqa: F811  (fixtures of test_ascend)
    from unideploy.tools.convert.om import plan_atc

    spec = ModelSpec(imgsz=(64, 64))
    with pytest.raises(InputError, match="cannot be combined with dynamic_hw"):
        plan_atc(tiny_onnx, spec, tmp_path / "m.om", {"soc": SOC, "aipp": True, "dynamic_hw": "64,64;32,32"})
    with pytest.raises(InputError, match="om option aipp must be true or false, got 'maybe'"):
        plan_atc(tiny_onnx, spec, tmp_path / "m.om", {"soc": SOC, "aipp": "maybe"})
    plan = plan_atc(tiny_onnx, spec, tmp_path / "m.om", {"soc": SOC, "aipp": "false"})
    assert plan.aipp is None and not any(a.startswith("--insert_op_conf") for a in plan.command())


@pytest.mark.parametrize("backend", ["ascend", "acl"])
def test_demo_model_through_aipp_equals_the_float_path(doubles, fake_atc, tmp_path, backend):  # noqa: F811  (fixtures of test_ascend)
    onnx = DEMO / "shapes_yolov8.onnx"
    om = convert_export(onnx, to="om", out=tmp_path / "aipp.om", soc=SOC, aipp=True, dynamic_batch="1,2")
    plain = convert_export(onnx, to="om", out=tmp_path / "plain.om", soc=SOC, dynamic_batch="1,2")
    images = [cv2.imread(str(p)) for p in sorted((DEMO / "val" / "images").glob("*.jpg"))[:6]]
    with unideploy.load(om, backend=backend, device="0", batch=2) as fused, \
            unideploy.load(plain, backend=backend, device="0", batch=2) as host:
        assert fused.spec.in_model == "aipp" and host.spec.in_model is None
        assert fused.session.inputs[0].dtype == np.uint8 and fused.session.inputs[0].shape[1:] == (320, 320, 3)
        x, _ = fused.preprocess(images[0])
        assert x.dtype == np.uint8 and x.shape == (320, 320, 3)  # the letterboxed BGR image, no float work
        np.testing.assert_array_equal(x, host.prepare(images[0])[0])
        ours, ref = fused.predict_arrays(images), host.predict_arrays(images)
    boxes = 0
    for k, (o, r) in enumerate(zip(ours, ref)):
        assert_same_detections(o, r.xyxy, r.confidence, r.class_id, px=1.0, score_tol=1e-3, where=f"image {k}")
        boxes += len(r)
    assert boxes >= len(images)
    if backend == "acl":
        assert doubles["acl"].live() == {} and doubles["acl"].VIOLATIONS == []
