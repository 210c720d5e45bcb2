"""unideploy eval: data set loading, bad labels, and mAP parity with pycocotools on the same predictions."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import unideploy
from unideploy.tools.evaluate import evaluate, load_dataset
from unideploy.core.sinks import yolo_txt


@pytest.fixture(scope="module")
def pseudo_labelled(yolo_models, image_dir, tmp_path_factory) -> Path:
    """A YOLO-format data set whose labels are the fixture model's own confident predictions."""
    root = tmp_path_factory.mktemp("pseudo")
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    files = sorted(p for p in image_dir.iterdir() if p.suffix == ".jpg")[:12]
    with unideploy.load(yolo_models["yolov8n"]["onnx"], conf=0.5) as pred:
        names = pred.names
        for f, det in zip(files, pred(files)):
            shutil.copy(f, root / "images" / "val" / f.name)
            (root / "labels" / "val" / f"{f.stem}.txt").write_text(yolo_txt(det, with_conf=False))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/val\nval: images/val\nnames: {json.dumps({k: v for k, v in names.items()})}\n")
    return root


def test_self_labelled_map_is_high_and_matches_pycocotools(yolo_models, pseudo_labelled, tmp_path):
    preds: list = []
    report = evaluate(yolo_models["yolov8n"]["onnx"], pseudo_labelled / "data.yaml", predictions_out=preds)
    assert report["images"] == 12 and report["backend"] == "onnxruntime"
    assert report["mAP50"] > 0.95, report["mAP50"]
    assert 0 < report["mAP50-95"] <= report["mAP50"] <= 1

    # the same predictions through pycocotools directly, from files, give the same numbers
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(load_dataset(pseudo_labelled / "data.yaml").to_coco()))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes([{k: p[k] for k in ("image_id", "category_id", "bbox", "score")} for p in preds])
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, 300]
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert abs(ev.stats[1] - report["mAP50"]) < 1e-4  # summarize() honours maxDets[2] for AP50 ...
    prec = ev.eval["precision"][..., 0, -1]              # ... but not for AP50-95: read it as summarize() does
    assert abs(prec[prec > -1].mean() - report["mAP50-95"]) < 1e-4


def test_coco_json_and_yaml_give_the_same_result(yolo_models, pseudo_labelled, tmp_path):
    ds = load_dataset(pseudo_labelled / "data.yaml")
    coco_file = tmp_path / "instances.json"
    coco_file.write_text(json.dumps(ds.to_coco()))
    a = evaluate(yolo_models["yolov8n"]["onnx"], pseudo_labelled / "data.yaml")
    b = evaluate(yolo_models["yolov8n"]["onnx"], coco_file, images=pseudo_labelled / "images" / "val")
    assert a["mAP50-95"] == pytest.approx(b["mAP50-95"], abs=1e-6)


def test_bad_labels_are_reported_not_fatal(yolo_models, pseudo_labelled, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(pseudo_labelled, root)
    labels = sorted((root / "labels" / "val").glob("*.txt"))
    labels[0].write_text("0 0.9 0.9 0.5 0.5\n")          # box outside the image -> clipped
    labels[1].write_text("999 0.5 0.5 0.1 0.1\nnot a label\n")  # unknown class + malformed line
    labels[2].unlink()                                    # image without a label file
    (root / "images" / "val" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")  # undecodable image
    ds = load_dataset(root / "data.yaml")
    text = "\n".join(ds.warnings)
    assert "clipped" in text and "class id 999" in text and "expected 'class cx cy w h'" in text
    assert "no label file" in text
    report = evaluate(yolo_models["yolov8n"]["onnx"], root / "data.yaml")
    assert report["images"] == 12
    assert any("broken.jpg" in s for s in report["skipped"]) or any("broken.jpg" in w for w in report["warnings"])


def test_eval_cli_writes_json(yolo_models, pseudo_labelled, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "unideploy", "eval", str(yolo_models["yolov8n"]["onnx"]),
                           "--data", str(pseudo_labelled / "data.yaml"), "--json", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    for key in ("mAP50-95", "mAP50", "per_class", "images", "backend"):
        assert key in r
    assert 0 <= r["mAP50-95"] <= 1 and isinstance(r["per_class"], dict)
    assert "mAP50-95" in proc.stdout


def test_missing_data_is_a_clear_error(yolo_models, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "unideploy", "eval", str(yolo_models["yolov8n"]["onnx"]),
                           "--data", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and "nope.yaml" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_eval_cli_on_ray_equals_single_process(yolo_models, pseudo_labelled, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray.json"
    proc = subprocess.run([sys.executable, "-m", "unideploy", "eval", str(yolo_models["yolov8n"]["onnx"]),
                           "--data", str(pseudo_labelled / "data.yaml"), "--ray", "--ray-actors", "1",
                           "--json", str(out), "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ray_report = json.loads(out.read_text())
    local = evaluate(yolo_models["yolov8n"]["onnx"], pseudo_labelled / "data.yaml")
    assert ray_report["ray"] is True and ray_report["images"] == local["images"]
    assert ray_report["mAP50-95"] == pytest.approx(local["mAP50-95"], abs=1e-6)
