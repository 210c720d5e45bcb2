"""Classifiers: torchvision ResNet-50 and Ultralytics YOLOv8n-cls (random init) exported to ONNX, and top-k eval.

* ResNet-50: ImageNet preprocessing (Resize(256) + CenterCrop(224) on PIL, ImageNet mean/std) recognised for a
  model without metadata; compared with torch on the same input tensors (top-5 identical, probabilities within
  1e-3) and with torchvision's own transforms on PIL images.
* YOLOv8n-cls: exported by Ultralytics, against Ultralytics predict on the same files.
* ``evaluate_classification`` on a folder per class, against top-k counted by hand.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from family_helpers import bgr_to_input, calibrate, export_onnx
from unideploy.core.errors import InputError
from unideploy.runtime.families.classify import IMAGENET_MEAN, IMAGENET_STD, to_probabilities

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("onnx")

N_IMAGES = 10


def top5(p):
    return np.argsort(-p, kind="stable")[:5].tolist()


def assert_same_topk(ours, ref_probs, where, gap=1e-4):
    """Top-5 identical (ranks whose reference probabilities are within ``gap`` may swap), probabilities 1e-3."""
    np.testing.assert_allclose(ours.probs, ref_probs, atol=1e-3, err_msg=where)
    ref_top = top5(ref_probs)
    assert ours.class_id[0] == ref_top[0] or abs(ref_probs[ours.class_id[0]] - ref_probs[ref_top[0]]) < gap, where
    for a, b in zip(ours.class_id[:5].tolist(), ref_top):
        assert a == b or abs(ref_probs[a] - ref_probs[b]) < gap, f"{where}: top-5 {ours.class_id[:5]} vs {ref_top}"


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    calibrate(model, (224, 224), bgr_to_input(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    with torch.no_grad():
        model.fc.weight *= 8.0  # random init gives ~uniform probabilities: make the top classes stand out
    path = export_onnx(model, (224, 224), tmp_path_factory.mktemp("resnet") / "resnet50.onnx", output_names=("logits",))
    return model, path


def test_resnet_parity(resnet, image_dir):
    """Against torch on the same input tensors, and against torchvision's ImageNet transform on PIL images."""
    from PIL import Image
    import torchvision.transforms as T

    model, path = resnet
    files = sorted(image_dir.iterdir())[:N_IMAGES]
    with unideploy.load(path) as pred:
        assert pred.adapter.name == "classify" and pred.task == "classify"  # recognised: one (B, 1000) output
        spec = pred.spec
        assert (spec.mean, spec.std, spec.resize, spec.extra["crop_fraction"]) == (
            IMAGENET_MEAN, IMAGENET_STD, "crop", 0.875)
        results = pred(files)
        tensors = np.stack([pred.preprocess(cv2.imread(str(f)))[0] for f in files])
    assert len({r.top1 for r in results}) > 1, "every image has the same class: the test would prove little"
    with torch.no_grad():
        same = torch.softmax(model(torch.from_numpy(tensors)), 1).numpy()
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    pil = torch.stack([tf(Image.fromarray(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB))) for f in files])
    np.testing.assert_array_equal(tensors, pil.numpy())  # the preprocessing itself is torchvision's, bit for bit
    for f, r, p in zip(files, results, same):
        assert r.class_id.tolist() == top5(p), f.name
        np.testing.assert_allclose(r.probs, p, atol=1e-3, err_msg=f.name)
        assert r.confidence.max() > 0.05


def test_resize_numpy_twin_of_pillow():
    """The numpy resize (used without Pillow) against Pillow: exact for one-pass resizes, within 1 level else."""
    from PIL import Image

    from unideploy.core.ops.resample import resize_pil

    rng = np.random.default_rng(0)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(8, 400, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ow, oh = (int(v) for v in rng.integers(8, 300, 2))
        for interp, flt in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC)):
            for size in ((ow, h), (w, oh)):  # one pass: no pass order to disagree on
                ref = np.asarray(Image.fromarray(img).resize(size, flt))
                np.testing.assert_array_equal(resize_pil(img, size, interp, backend="numpy"), ref)
        ref = np.asarray(Image.fromarray(img).resize((ow, oh), Image.Resampling.BILINEAR))
        assert np.abs(resize_pil(img, (ow, oh), backend="numpy").astype(int) - ref).max() <= 1
        np.testing.assert_array_equal(resize_pil(img, (ow, oh)), ref)


@pytest.fixture(scope="module")
def yolo_cls(tmp_path_factory):
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    d = tmp_path_factory.mktemp("cls")
    cwd = os.getcwd()
    os.chdir(d)
    try:
        torch.manual_seed(0)
        model = YOLO("yolov8n-cls.yaml")
        calibrate(model.model, (128, 128), bgr_to_input())
        with torch.no_grad():
            model.model.model[-1].linear.weight *= 30.0
        path = Path(model.export(format="onnx", imgsz=128, simplify=True, verbose=False)).resolve()
    finally:
        os.chdir(cwd)
    return path


@pytest.mark.slow
def test_ultralytics_cls_against_predict(yolo_cls, image_dir):
    from ultralytics import YOLO

    files = sorted(image_dir.iterdir())
    with unideploy.load(yolo_cls) as pred:
        assert pred.adapter.name == "classify" and pred.spec.extra["preprocess"] == "ultralytics"
        assert (pred.spec.mean, pred.spec.std, pred.spec.extra["crop_fraction"]) == ((0, 0, 0), (1, 1, 1), 1.0)
        results = pred(files)
    ref = YOLO(str(yolo_cls), task="classify")
    tops = set()
    for f, r in zip(files, results):
        p = ref.predict(str(f), imgsz=128, verbose=False)[0].probs.data.numpy()
        assert_same_topk(r, p, f.name)
        tops.add(r.top1)
    assert len(tops) > 1


@pytest.mark.slow
def test_evaluate_classification(yolo_cls, image_dir, tmp_path):
    from unideploy.tools.evaluate.classify import evaluate_classification

    files = sorted(image_dir.iterdir())
    with unideploy.load(yolo_cls) as pred:
        results = pred(files)
        # three class folders named after model classes; images spread so that some are right, some wrong
        classes = [str(results[0].top1), str(results[1].class_id[3]), "999"]
        root = tmp_path / "val"
        expect1 = expect5 = 0
        for i, (f, r) in enumerate(zip(files, results)):
            c = classes[i % 3] if i > 1 else classes[i]
            (root / c).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / c / f.name)
            expect1 += int(r.top1 == int(c))
            expect5 += int(int(c) in r.class_id[:5].tolist())
        (root / classes[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        rep = evaluate_classification(pred, root)
    n = len(files)
    assert rep["images"] == n and len(rep["skipped"]) == 1 and "broken.jpg" in rep["skipped"][0]
    assert rep["mapping"] == "names"
    assert rep["top1"] == pytest.approx(expect1 / n) and rep["top5"] == pytest.approx(expect5 / n)
    assert rep["top1"] > 0 and rep["top5"] >= rep["top1"]
    assert sum(v["images"] for v in rep["per_class"].values()) == n
    assert rep["per_class"][classes[0]]["top1"] == 1.0 or rep["per_class"][classes[0]]["images"] > 1


def test_evaluate_mapping_errors(resnet, image_dir, tmp_path):
    from unideploy.tools.evaluate.classify import evaluate_classification, map_classes

    _, path = resnet
    root = tmp_path / "val"
    for c in ("n01440764", "n02102040"):
        (root / c).mkdir(parents=True)
        shutil.copy(sorted(image_dir.iterdir())[0], root / c / "a.jpg")
    with unideploy.load(path) as pred:
        with pytest.raises(InputError, match="cannot match class folders"):
            evaluate_classification(pred, root)
        rep = evaluate_classification(pred, root, mapping={"n01440764": 0, "n02102040": 217})
    assert rep["mapping"] == "given" and rep["images"] == 2
    assert map_classes(["3", "17"], {}, 1000) == ({"3": 3, "17": 17}, "index")
    assert map_classes(["b", "a"], {}, 2)[0] == {"b": 0, "a": 1}  # folders arrive sorted from class_folders


def test_probabilities_kept_or_softmaxed():
    p = np.array([[0.1, 0.7, 0.2]], np.float32)
    np.testing.assert_array_equal(to_probabilities(p), p)
    logits = np.array([[1.0, 3.0, 2.0]], np.float32)
    e = np.exp(logits - 3)
    np.testing.assert_allclose(to_probabilities(logits), e / e.sum(), rtol=1e-6)


def test_predict_cli_classifier(resnet, image_dir, tmp_path, capsys):
    from unideploy.cli.main import main

    _, path = resnet
    for f in sorted(image_dir.iterdir())[:3]:
        shutil.copy(f, tmp_path / f.name)
    assert main(["predict", str(path), str(tmp_path), "--family", "classify"]) == 0
    assert "3 image(s)" in capsys.readouterr().err
