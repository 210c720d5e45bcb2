"""The bundled RT-DETR demo model (``tools/train_rtdetr_demo.py``): spec, accuracy as its train report states,
and parity with Ultralytics on the same ONNX file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from unideploy.apps.demo import DEMO_DATA
from unideploy.runtime.open import read_spec
from unideploy.tools.evaluate import evaluate

ASSETS = DEMO_DATA.parent.parent
MODEL = ASSETS / "shapes_rtdetr.onnx"
REPORT = ASSETS / "rtdetr_train_report.json"
pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="RT-DETR demo model not bundled")


@pytest.fixture(scope="module")
def rtdetr_eval():
    return evaluate(MODEL, DEMO_DATA)


@pytest.fixture(scope="module")
def report():
    return json.loads(REPORT.read_text())


def test_rtdetr_assets_carry_their_spec(report):
    spec = read_spec(MODEL)
    assert spec.family == "rtdetr" and spec.task == "detect" and spec.imgsz == (320, 320) and spec.resize == "stretch"
    assert list(spec.names.values()) == ["circle", "square", "triangle", "star", "hexagon", "cross"]
    assert (ASSETS / "shapes_rtdetr.pt").stat().st_size + MODEL.stat().st_size < 20e6
    assert report["train"]["epochs_run"] >= 1 and report["train"]["wall_time_s"] > 0
    assert report["export"]["output"] == {"output0": [1, report["args"]["queries"], 6]}


def test_rtdetr_eval_matches_the_train_report(rtdetr_eval, report):
    """unideploy eval of the bundled ONNX on the bundled val split is within one point of Ultralytics' val of
    the same file, as recorded when the model was trained."""
    assert rtdetr_eval["images"] == 150 and not rtdetr_eval["skipped"]
    ref = report["val_bundled_onnx"]
    assert abs(rtdetr_eval["mAP50-95"] - ref["mAP50-95"]) <= 0.01, (rtdetr_eval["mAP50-95"], ref["mAP50-95"])
    assert abs(rtdetr_eval["mAP50"] - ref["mAP50"]) <= 0.01, (rtdetr_eval["mAP50"], ref["mAP50"])


def test_rtdetr_predictions_match_ultralytics(tmp_path):
    """Same ONNX file, same images: unideploy's boxes, scores and classes equal Ultralytics' RT-DETR predictor's."""
    pytest.importorskip("ultralytics")
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    import unideploy
    from ultralytics import RTDETR

    images = sorted((DEMO_DATA.parent / "images").glob("*.jpg"))[:6]
    shutil.copyfile(MODEL, tmp_path / MODEL.name)
    ref = RTDETR(str(tmp_path / MODEL.name)).predict([str(p) for p in images], imgsz=320, conf=0.25, verbose=False)
    with unideploy.load(MODEL, backend="onnxruntime", conf=0.25) as pred:
        ours = pred(images)
    for r, d in zip(ref, ours):
        order_r = np.argsort(-r.boxes.conf.numpy(), kind="stable")
        order_d = np.argsort(-d.confidence, kind="stable")
        assert len(d) == len(r.boxes) > 0
        h, w = r.orig_shape
        ref_xyxy = r.boxes.xyxy.numpy().clip(0, [w, h, w, h])  # Ultralytics leaves RT-DETR boxes unclipped
        np.testing.assert_allclose(d.xyxy[order_d], ref_xyxy[order_r], atol=0.05)
        np.testing.assert_allclose(d.confidence[order_d], r.boxes.conf.numpy()[order_r], atol=1e-4)
        np.testing.assert_array_equal(d.class_id[order_d], r.boxes.cls.numpy().astype(int)[order_r])
