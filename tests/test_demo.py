"""The bundled demo model and data set: accuracy, parity of eval with Ultralytics val, and `unideploy demo`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from unideploy.apps.demo import DEMO_DATA, DEMO_MODEL
from unideploy.tools.evaluate import evaluate
from unideploy.runtime.open import read_spec


def test_bundled_assets_carry_their_spec():
    spec = read_spec(DEMO_MODEL)
    assert spec.imgsz == (320, 320) and spec.task == "detect" and spec.family == "yolo"
    assert list(spec.names.values()) == ["circle", "square", "triangle", "star", "hexagon", "cross"]
    assert len(list((DEMO_DATA.parent / "images").glob("*.jpg"))) <= 200


@pytest.fixture(scope="module")
def demo_eval():
    return evaluate(DEMO_MODEL, DEMO_DATA)


def test_demo_model_is_accurate(demo_eval):
    assert demo_eval["images"] == 150 and not demo_eval["skipped"]
    assert demo_eval["mAP50-95"] >= 0.80, demo_eval["mAP50-95"]


@pytest.mark.slow
def test_eval_within_one_point_of_ultralytics_val(demo_eval, tmp_path):
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    import shutil

    data = tmp_path / "val"
    shutil.copytree(DEMO_DATA.parent, data)  # Ultralytics writes labels.cache beside the labels
    m = YOLO(str(DEMO_MODEL), task="detect")
    r = m.val(data=str(data / DEMO_DATA.name), imgsz=320, batch=1, conf=0.001, iou=0.7, plots=False, verbose=False,
              project=str(tmp_path), name="val")
    assert abs(r.box.map - demo_eval["mAP50-95"]) <= 0.01, (r.box.map, demo_eval["mAP50-95"])
    assert abs(r.box.map50 - demo_eval["mAP50"]) <= 0.01, (r.box.map50, demo_eval["mAP50"])


def test_demo_command_writes_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "unideploy", "demo", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    backends = {r["backend"] for r in report["rows"]}
    assert "onnxruntime" in backends
    for row in report["rows"]:
        assert row["map50_95"] >= 0.80 and row["images_per_s"] > 0
    assert "mAP50-95" in proc.stdout and (tmp_path / "report.md").exists()
    assert len(list((tmp_path / "onnxruntime-fp32" / "images").iterdir())) == 150
    if importlib.util.find_spec("nncf") and importlib.util.find_spec("openvino"):
        # the INT8 row and its box-by-box check against FP32
        assert {(r["backend"], r["precision"]) for r in report["rows"]} >= {("openvino", "fp32"), ("openvino", "int8")}
        check = report["int8_vs_fp32"]
        assert check["ref_boxes"] > 500 and check["matched"] >= 0.9 * check["ref_boxes"], check
        assert "INT8 vs FP32" in proc.stderr + proc.stdout and "INT8 (OpenVINO" in (tmp_path / "report.md").read_text()
