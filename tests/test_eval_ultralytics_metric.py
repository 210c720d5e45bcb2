"""``eval --metric ultralytics`` for segmentation and pose: each step against Ultralytics' own code on the same
data — the val loader's resize and ground-truth masks (its dataset), ``process_mask``, ``box_iou`` / ``mask_iou`` /
``kpt_iou``, and the whole score against ``match_predictions`` + ``ap_per_class`` — and the seg and pose demos
against Ultralytics ``val``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from unideploy.tools.evaluate import evaluate, load_dataset
from unideploy.tools.evaluate.ultralytics_seg import (
    UltralyticsSegScorer, box_iou, gt_masks, mask_iou, pred_masks, resample_polygon, validator_letterbox)

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

IMGSZ = 160
SIZES = [(272, 636), (633, 444), (120, 100), (160, 160), (301, 257)]  # (h, w): down, up, square, odd


def _polygon(rng, h, w) -> np.ndarray:
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    r = rng.uniform(0.08, 0.3) * min(h, w)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 9))
    rad = r * rng.uniform(0.5, 1.0, 9)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A labelled segmentation set (overlapping polygons of 2 classes) and Ultralytics' val dataset items of it."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    root = tmp_path_factory.mktemp("seg")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(4)
    for i, (h, w) in enumerate(SIZES):
        cv2.imwrite(str(root / "images" / f"im{i}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        lines = [f"{rng.integers(0, 2)} " + " ".join(f"{v:.6f}" for v in (_polygon(rng, h, w) / [w, h]).ravel())
                 for _ in range(rng.integers(2, 6))]
        (root / "labels" / f"im{i}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(f"train: images\nval: images\nnames: {json.dumps({0: 'a', 1: 'b'})}\n")
    data = check_det_dataset(str(root / "data.yaml"))
    cfg = get_cfg(overrides={"task": "segment", "imgsz": IMGSZ, "mode": "val"})
    with contextlib.redirect_stderr(io.StringIO()):
        uds = build_yolo_dataset(cfg, data["val"], 1, data, mode="val", rect=False, stride=32)
    items = sorted((uds[k] for k in range(len(uds))), key=lambda it: it["im_file"])
    return root / "data.yaml", items


def test_loader_geometry_and_ground_truth_masks_equal_ultralytics_dataset(seg_set):
    yaml, items = seg_set
    ds = load_dataset(yaml, task="segment")
    samples = sorted(ds.samples, key=lambda s: str(s.path))
    assert len(samples) == len(items) == len(SIZES)
    for s, it in zip(samples, items):
        img = cv2.imread(str(s.path))
        resized, info = validator_letterbox(img, (IMGSZ, IMGSZ))
        np.testing.assert_array_equal(resized[..., ::-1].transpose(2, 0, 1), it["img"].numpy())  # theirs is RGB CHW
        (gain_x, gain_y), (left, top) = info.gain, info.pad
        assert (gain_y, gain_x) == pytest.approx(it["ratio_pad"][0]) and (left, top) == tuple(it["ratio_pad"][1])
        polys = [np.asarray(p) * info.gain + info.pad for p in s.extras]
        masks, order = gt_masks([resample_polygon(p) for p in polys], (IMGSZ, IMGSZ))
        n = len(it["cls"])
        theirs = it["masks"][0].numpy()[None] == np.arange(1, n + 1)[:, None, None]
        np.testing.assert_array_equal(masks, theirs)  # the same pixels, largest instance first
        np.testing.assert_array_equal(s.class_id[order], it["cls"].numpy().ravel().astype(np.int64))
        assert masks.any(axis=(1, 2)).sum() >= 1


def test_pred_masks_and_ious_equal_ultralytics():
    from ultralytics.utils import ops
    from ultralytics.utils.metrics import box_iou as ul_box_iou, mask_iou as ul_mask_iou

    rng = np.random.default_rng(5)
    protos = rng.normal(0, 1, (8, 40, 48)).astype(np.float32)
    coeffs = rng.normal(0, 1, (12, 8)).astype(np.float32)
    xy = rng.uniform(0, 150, (12, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(3, 60, (12, 2))], 1).astype(np.float32)
    ours = pred_masks(protos, coeffs, boxes, (160, 192))
    ref = ops.process_mask(torch.from_numpy(protos), torch.from_numpy(coeffs), torch.from_numpy(boxes), (160, 192))
    np.testing.assert_array_equal(ours, ref.numpy().astype(bool))
    gt = rng.uniform(0, 1, (5, 40, 48)) > 0.6
    np.testing.assert_allclose(mask_iou(gt, ours), ul_mask_iou(torch.from_numpy(gt.reshape(5, -1)).float(),
                                                               ref.flatten(1).float()).numpy(), atol=1e-6)
    np.testing.assert_allclose(box_iou(boxes[:5], boxes), ul_box_iou(torch.from_numpy(boxes[:5]),
                                                                     torch.from_numpy(boxes)).numpy(), atol=1e-6)


def test_scorer_equals_ultralytics_match_predictions_and_ap(seg_set):
    """Predictions near the ground truth (masks from prototypes that hold the true masks), rescored, plus false
    positives: our scorer's box and mask mAP equal Ultralytics' functions run on the same arrays."""
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils import ops
    from ultralytics.utils.metrics import ap_per_class, box_iou as ul_box_iou, mask_iou as ul_mask_iou

    yaml, items = seg_set
    samples = sorted(load_dataset(yaml, task="segment").samples, key=lambda s: str(s.path))
    v = BaseValidator.__new__(BaseValidator)
    v.iouv = torch.linspace(0.5, 0.95, 10)
    scorer = UltralyticsSegScorer({0: "a", 1: "b"})
    rng = np.random.default_rng(6)
    stats: dict[str, list] = {"tp_b": [], "tp_m": [], "conf": [], "pcls": [], "tcls": []}
    for s, it in zip(samples, items):
        _, info = validator_letterbox(cv2.imread(str(s.path)), (IMGSZ, IMGSZ))
        n = len(it["cls"])
        gt_m = it["masks"][0].numpy()[None] == np.arange(1, n + 1)[:, None, None]
        gt_c = it["cls"].numpy().ravel()
        xywh = it["bboxes"].numpy() * IMGSZ
        gt_b = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        protos = np.concatenate([np.where(gt_m, 4.0, -4.0), rng.normal(0, 1, (3, 40, 40))], 0).astype(np.float32)
        k = 2 * n + 2  # each instance twice (one sloppy), two false positives
        src = np.r_[np.arange(n), np.arange(n), rng.integers(0, n, 2)]
        coeffs = np.zeros((k, n + 3), np.float32)
        coeffs[np.arange(k), src] = 1
        coeffs[:, n:] = rng.normal(0, 0.8, (k, 3)) * np.r_[np.full(n, 0.3), np.full(n + 2, 2.0)][:, None]
        boxes = (gt_b[src] + rng.normal(0, 1.5, (k, 4)) * np.r_[np.ones(n), np.full(n + 2, 4.0)][:, None])
        boxes = boxes.astype(np.float32)
        cls = np.where(rng.uniform(size=k) < 0.85, gt_c[src], 1 - gt_c[src]).astype(np.int64)
        scores = np.sort(rng.uniform(0.01, 1, k))[::-1].astype(np.float32)
        scorer.add_image(s.class_id, s.xyxy, s.extras, info, (IMGSZ, IMGSZ), boxes, scores, cls,
                         protos, coeffs)
        pm = ops.process_mask(torch.from_numpy(protos), torch.from_numpy(coeffs), torch.from_numpy(boxes),
                              (IMGSZ, IMGSZ))
        pc, tc = torch.from_numpy(cls), torch.from_numpy(gt_c.astype(np.int64))
        stats["tp_b"].append(v.match_predictions(pc, tc, ul_box_iou(torch.from_numpy(gt_b), torch.from_numpy(
            boxes))).numpy())
        stats["tp_m"].append(v.match_predictions(pc, tc, ul_mask_iou(torch.from_numpy(gt_m.reshape(n, -1)).float(),
                                                                     pm.flatten(1).float())).numpy())
        stats["conf"].append(scores)
        stats["pcls"].append(cls)
        stats["tcls"].append(gt_c)
    ours = scorer.result()
    cat = {k: np.concatenate(x) for k, x in stats.items()}
    for key, tp in (("box", cat["tp_b"]), ("mask", cat["tp_m"])):
        ap = ap_per_class(tp, cat["conf"], cat["pcls"], cat["tcls"])[5]
        assert ours[key]["mAP50-95"] == pytest.approx(float(ap.mean()), abs=1e-6), key
        assert ours[key]["mAP50"] == pytest.approx(float(ap[:, 0].mean()), abs=1e-6), key
        assert 0.05 < ours[key]["mAP50-95"] < 0.95, ours[key]


def test_metric_is_checked(seg_set, tmp_path):
    from unideploy.apps.demo import ASSETS
    from unideploy.core.errors import InputError

    yaml, _ = seg_set
    with pytest.raises(InputError, match="metric must be one of pycocotools, ultralytics, got 'coco'"):
        evaluate(ASSETS / "shapes_yolov8_seg.onnx", yaml, metric="coco")
    with pytest.raises(InputError, match="metric .ultralytics. scores segmentation and pose models"):
        evaluate(ASSETS / "shapes_yolov8_obb.onnx", ASSETS / "val_obb" / "data.yaml", metric="ultralytics")


def test_kpt_iou_equals_ultralytics():
    from ultralytics.utils.metrics import kpt_iou as ul_kpt_iou

    from unideploy.tools.evaluate.ultralytics_pose import kpt_iou

    rng = np.random.default_rng(8)
    gt = np.concatenate([rng.uniform(0, 100, (4, 5, 2)), rng.choice([0.0, 1.0, 2.0], (4, 5, 1))], 2)
    pred = gt[rng.integers(0, 4, 7)] + np.concatenate([rng.normal(0, 4, (7, 5, 2)), rng.uniform(0, 1, (7, 5, 1))], 2)
    area = rng.uniform(200, 3000, 4)
    sigma = np.full(5, 0.2)
    ref = ul_kpt_iou(torch.from_numpy(gt).float(), torch.from_numpy(pred).float(), sigma=sigma.astype(np.float32), area=torch.from_numpy(area).float()).numpy()
    ours = kpt_iou(gt, pred, area, sigma)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert 0.05 < ours.max() <= 1 and ours.min() < 0.5


@pytest.mark.parametrize("task", ["seg", "pose"])
def test_demo_within_one_point_of_ultralytics_val(tmp_path, task):
    """The trained seg / pose demos on their bundled val sets: multi-label NMS + the Ultralytics metric vs
    Ultralytics ``val`` on the same ONNX (measured: seg box 0.5565 / 0.7343 both, mask 0.3679 / 0.7028 vs
    0.3692 / 0.7028; pose box 0.6585 / 0.9131 and keypoints 0.6527 / 0.8997 both)."""
    from ultralytics import YOLO

    from unideploy.apps.demo import ASSETS

    model, val = ASSETS / f"shapes_yolov8_{task}.onnx", ASSETS / f"val_{task}"
    data = tmp_path / "val"
    shutil.copytree(val, data)  # Ultralytics writes labels.cache beside the labels
    ours = evaluate(model, data / "data.yaml", multi_label=True, metric="ultralytics")
    with contextlib.redirect_stdout(io.StringIO()):
        ref = YOLO(str(model)).val(data=str(data / "data.yaml"), imgsz=160, batch=1, conf=0.001, iou=0.7,
                                   plots=False, verbose=False, project=str(tmp_path), name="v")
    key, own = ("mask", ref.seg) if task == "seg" else ("pose", ref.pose)
    pairs = {"box": ((ours["mAP50-95"], ref.box.map), (ours["mAP50"], ref.box.map50)),
             key: ((ours[key]["mAP50-95"], own.map), (ours[key]["mAP50"], own.map50))}
    for k, ((a, b), (a50, b50)) in pairs.items():
        assert abs(a - b) <= 0.01 and abs(a50 - b50) <= 0.01, (k, a, b, a50, b50)
    assert ours[key]["metric"].startswith("Ultralytics") and key in ours["pycocotools"]


def test_cli_flags(tmp_path):
    """``eval --multi-label --metric ultralytics`` reaches the library (the JSON equals the Python call's numbers);
    ``predict --multi-label`` keeps boxes under several classes; the flags refuse --ray and bad values."""
    import subprocess
    import sys

    from unideploy.apps.demo import ASSETS

    model, data = ASSETS / "shapes_yolov8_pose.onnx", ASSETS / "val_pose" / "data.yaml"
    out = tmp_path / "r.json"
    run = [sys.executable, "-m", "unideploy"]
    proc = subprocess.run([*run, "eval", str(model), "--data", str(data), "--multi-label", "--metric", "ultralytics",
                           "--json", str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    lib = evaluate(model, data, multi_label=True, metric="ultralytics")
    assert r["pose"]["mAP50-95"] == pytest.approx(lib["pose"]["mAP50-95"], abs=1e-12)
    assert "Ultralytics PoseValidator" in proc.stdout
    bad = subprocess.run([*run, "eval", str(model), "--data", str(data), "--metric", "coco"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "--metric: invalid choice: 'coco'" in bad.stderr
    ray = subprocess.run([*run, "eval", str(model), "--data", str(data), "--multi-label", "--ray"],
                         capture_output=True, text=True, timeout=120)
    assert ray.returncode == 1 and "--multi-label is not available with --ray" in ray.stderr, ray.stderr
    seg = ASSETS / "shapes_yolov8_seg.onnx"
    counts = {}
    for flag in ([], ["--multi-label"]):
        js = tmp_path / f"p{len(flag)}.json"
        p = subprocess.run([*run, "predict", str(seg), str(ASSETS / "val_seg" / "images"), "--conf", "0.05",
                            "--save-json", str(js), "-q", *flag], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        recs = json.loads(js.read_text())
        boxes = [(r["image_id"], tuple(round(v, 2) for v in r["bbox"])) for r in recs]
        counts[len(flag)] = (len(recs), len(boxes) - len(set(boxes)))
    assert counts[0][1] == 0 and counts[1][1] > 0 and counts[1][0] > counts[0][0], counts
