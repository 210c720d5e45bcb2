"""Preprocessing inside the model (OpenVINO PrePostProcessor): the same predictions as the numpy float path.

Tolerances (f32 compute): boxes within 1 px and scores within 1e-3 of the float path, same classes and counts.
Not bit-identical: the compiled model reads the image as NHWC and OpenVINO's CPU plugin then sums the first
convolution in another order (measured: even with the scale left out, the raw outputs differ by ~1e-2 on
0-255 inputs), so the outputs differ in the last float bits.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from parity import assert_same_detections
from unideploy.core.errors import InputError
from unideploy.core.spec import ModelSpec

pytest.importorskip("openvino")

DEMO = Path(unideploy.__file__).parent / "assets" / "demo"
F32 = {"precision": "f32"}  # this CPU computes f32 IRs in bf16 by default


def _demo_images(n: int = 12) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted((DEMO / "val" / "images").rglob("*.jpg"))[:n]]


def _assert_same_predictions(host, fused, images, where):
    """Every box matched one to one: same class, corners within 1 px, score within 1e-3 (random weights tie
    scores, so the order of equal-score boxes may differ)."""
    boxes = 0
    for k, img in enumerate(images):
        a, b = host.predict_arrays([img])[0], fused.predict_arrays([img])[0]
        assert_same_detections(b, a.xyxy, a.confidence, a.class_id, px=1.0, score_tol=1e-3, where=f"{where} image {k}")
        boxes += len(a)
    assert boxes >= len(images), f"{where}: too few boxes ({boxes}) for the comparison to mean anything"


def test_demo_model_in_model_equals_float_path():
    onnx = DEMO / "shapes_yolov8.onnx"
    with unideploy.load(onnx, backend="openvino", in_model_preprocess=False, **F32) as host, \
            unideploy.load(onnx, backend="openvino", in_model_preprocess=True, **F32) as fused:
        assert host.spec.in_model is None and host.session.inputs[0].dtype == np.float32
        assert fused.spec.in_model == "openvino" and fused.spec.layout == "nhwc"
        inp = fused.session.inputs[0]
        assert inp.dtype == np.uint8 and inp.shape[1:] == (*fused.spec.imgsz, 3)
        img = _demo_images(1)[0]
        x, _ = fused.preprocess(img)
        assert x.dtype == np.uint8 and x.shape == (*fused.spec.imgsz, 3)  # the letterboxed BGR image, no float work
        np.testing.assert_array_equal(x, host.prepare(img)[0])
        _assert_same_predictions(host, fused, _demo_images(), "demo")


def test_random_yolov8n_in_model_equals_float_path(yolo_models, image_dir):
    images = [cv2.imread(str(p)) for p in sorted(image_dir.glob("img*.jpg"))[:8]]
    for fmt in ("openvino", "onnx"):  # an IR from anywhere and an ONNX file, both fused at load
        model = yolo_models["yolov8n"][fmt]
        with unideploy.load(model, backend="openvino", in_model_preprocess=False, **F32) as host, \
                unideploy.load(model, backend="openvino", in_model_preprocess=True, **F32) as fused:
            assert fused.spec.in_model == "openvino"
            _assert_same_predictions(host, fused, images, f"yolov8n {fmt}")
            # batches of several images (the streaming path's to_batch) give the same results as one by one
            many = fused.predict_arrays(images[:3])
            for k, det in enumerate(many):
                one = fused.predict_arrays([images[k]])[0]
                assert_same_detections(det, one.xyxy, one.confidence, one.class_id, px=1e-2, score_tol=1e-4)


def test_mean_std_and_bgr_families_are_fused_too():
    """A spec with per-channel mean/std and BGR input (YOLOX/NanoDet-style) gives the float path's tensors."""
    onnx = DEMO / "shapes_yolov8.onnx"
    spec = {"channel_order": "bgr", "scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    img = _demo_images(1)[0]
    with unideploy.load(onnx, backend="openvino", in_model_preprocess=False, spec=spec, **F32) as host, \
            unideploy.load(onnx, backend="openvino", spec=spec, in_model_preprocess=True, **F32) as fused:
        assert fused.spec.in_model == "openvino" and fused.spec.mean == host.spec.mean
        xa, _ = host.preprocess(img)
        xb, _ = fused.preprocess(img)
        ya, yb = host.infer(xa[None])[0], fused.infer(xb[None])[0]
        scale = float(np.abs(ya).max())
        assert float(np.abs(ya - yb).max()) <= 1e-4 * scale + 1e-3
        # and the steps really are applied: the same uint8 image fed without them gives other outputs
        with unideploy.load(onnx, backend="openvino", in_model_preprocess=False, **F32) as plain:
            yp = plain.infer(plain.preprocess(img)[0][None])[0]
        assert float(np.abs(yp - yb).max()) > 1e-2 * scale


def test_compare_passes_between_the_two_paths():
    onnx = DEMO / "shapes_yolov8.onnx"
    r = unideploy.compare(f"{onnx}@openvino", f"{onnx}@openvino", DEMO / "val" / "images", samples=8,
                          ref_options={"in_model_preprocess": False, **F32}, cand_options={"in_model_preprocess": True, **F32})
    assert r, r.table()


def test_exported_ir_carries_it_and_is_not_fused_twice(tmp_path):
    onnx = DEMO / "shapes_yolov8.onnx"
    xml = unideploy.export(onnx, to="openvino", out=tmp_path / "ir", in_model_preprocess=True)
    saved = unideploy.read_spec(xml)
    assert saved.in_model == "openvino" and saved.in_model_order == "bgr" and saved.layout == "nhwc"
    assert saved.channel_order == "rgb" and saved.scale == pytest.approx(1 / 255)  # what the network computes
    text = Path(xml).read_text()
    assert 'element_type="u8"' in text
    with unideploy.load(xml, **F32) as pred, \
            unideploy.load(onnx, backend="openvino", in_model_preprocess=False, **F32) as host:
        assert pred.session.fuse_preprocess(pred.spec) is None  # already compiled; and the spec says in_model
        from unideploy.runtime.backends.openvino_ppp import fusable

        core_model = pred.session._compile_args["core"].read_model(str(xml))
        assert fusable(core_model, saved) is not None  # a second load would refuse to add the steps again
        assert pred.session.inputs[0].dtype == np.uint8
        _assert_same_predictions(host, pred, _demo_images(), "saved IR")
    # the same IR opened with the option off still works: the steps are part of the file
    with unideploy.load(xml, in_model_preprocess=False, **F32) as pred:
        assert pred.spec.in_model == "openvino" and pred.preprocess(_demo_images(1)[0])[0].dtype == np.uint8


def test_onnx_runtime_is_untouched_and_bad_values_are_errors():
    onnx = DEMO / "shapes_yolov8.onnx"
    with unideploy.load(onnx, backend="onnxruntime", in_model_preprocess=True) as pred:  # shared option: ignored
        assert pred.spec.in_model is None and pred.session.inputs[0].dtype == np.float32
    with pytest.raises(InputError, match=r"in_model_preprocess must be True, False or None \(auto\), got 'yes'"):
        unideploy.load(onnx, backend="openvino", in_model_preprocess="yes")
    with pytest.raises(Exception, match="in_model must be one of"):
        ModelSpec(in_model="gpu")
    with pytest.raises(InputError, match="unknown openvino option"):
        unideploy.export(onnx, to="openvino", out="unused", fuse=True)


def test_auto_follows_the_compute_precision():
    """Off by default (bit-identical to the numpy path); auto (None) fuses only where float layers run in f32;
    asked for, it fuses under any precision."""
    onnx = DEMO / "shapes_yolov8.onnx"
    with unideploy.load(onnx, backend="openvino", **F32) as pred:
        assert pred.spec.in_model is None and pred.session.inputs[0].dtype == np.float32
    with unideploy.load(onnx, backend="openvino", in_model_preprocess=None) as pred:
        precision = pred.session.compute_precision()
        assert (pred.spec.in_model == "openvino") == (precision == "f32"), precision
    with unideploy.load(onnx, backend="openvino", in_model_preprocess=True) as pred:
        assert pred.spec.in_model == "openvino" and pred.session.inputs[0].dtype == np.uint8
        assert len(pred.predict_arrays(_demo_images(1))[0]) > 0
