"""Parity with Ultralytics ``predict`` on the same exported files (ONNX and OpenVINO IR)."""

from __future__ import annotations

import pytest

import unideploy
from parity import assert_same_detections
from conftest import has_module

pytestmark = pytest.mark.slow

CASES = [("yolov8n", "onnx", "onnxruntime"), ("yolo11n", "onnx", "onnxruntime"),
         ("yolov8n", "openvino", "openvino"), ("yolo11n", "openvino", "openvino")]


@pytest.mark.parametrize("name,fmt,backend", CASES, ids=["-".join(c) for c in CASES])
def test_matches_ultralytics_predict(yolo_models, image_dir, name, fmt, backend):
    if backend == "openvino" and not has_module("openvino"):
        pytest.skip("openvino not installed")
    from ultralytics import YOLO

    model_path = yolo_models[name][fmt]
    files = sorted(image_dir.iterdir())
    assert len(files) >= 20
    with unideploy.load(model_path, backend=backend, conf=0.001, iou=0.7) as pred:
        ours = pred(files)
        imgsz = pred.spec.imgsz
    ref_model = YOLO(str(model_path if fmt == "onnx" else model_path.parent), task="detect")
    total = 0
    for f, det in zip(files, ours):
        r = ref_model.predict(str(f), conf=0.001, iou=0.7, imgsz=list(imgsz), verbose=False)[0]
        b = r.boxes
        assert_same_detections(det, b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy(), where=f"{name}/{fmt}/{f.name}")
        assert det.image_shape == r.orig_shape
        total += len(det)
    assert total > 20 * len(files), "too few boxes for the comparison to exercise NMS"
