"""NanoDet-Plus family: a graph with NanoDet-Plus's ONNX output layout against NanoDet's own decoding.

NanoDet is not on PyPI, so the reference is its code reproduced below (RangiLyu/nanodet:
``data/transform/warp.py`` ShapeTransform with keep_ratio False + ``warp_boxes``, ``color.py`` normalisation,
``NanoDetPlusHead.get_bboxes`` with ``Integral`` and ``distance2bbox``, ``module/nms.py`` ``multiclass_nms`` /
``batched_nms``), run on the exported file with ONNX Runtime.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

import unideploy
from family_helpers import NANODET_MEAN, NANODET_STD, bgr_to_input, calibrate, export_onnx, nanodet_model
from parity import assert_same_detections

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("onnx")
F = torch.nn.functional

IMGSZ = (256, 320)
NC, REG_MAX, STRIDES = 7, 7, (8, 16, 32, 64)


# -- NanoDet reference --------------------------------------------------------------------------------------

def ref_preprocess(img, dst_hw):
    h, w = img.shape[:2]
    d_h, d_w = dst_hw
    C = np.eye(3)
    C[0, 2], C[1, 2] = -w / 2, -h / 2
    T = np.eye(3)
    T[0, 2], T[1, 2] = 0.5 * w, 0.5 * h  # get_translate_matrix(0, width, height)
    Rs = np.eye(3)
    Rs[0, 0] *= d_w / w
    Rs[1, 1] *= d_h / h  # get_resize_matrix(keep_ratio=False)
    M = Rs @ (T @ C)
    out = cv2.warpPerspective(img, M, dsize=(d_w, d_h)).astype(np.float32) / 255
    mean = np.array(NANODET_MEAN, dtype=np.float32).reshape(1, 1, 3) / 255
    std = np.array(NANODET_STD, dtype=np.float32).reshape(1, 1, 3) / 255
    out = (out - mean) / std
    return np.ascontiguousarray(out.transpose(2, 0, 1)), M


def ref_center_priors(input_hw):
    out = []
    for stride in STRIDES:
        h, w = math.ceil(input_hw[0] / stride), math.ceil(input_hw[1]) / stride
        x_range = torch.arange(w, dtype=torch.float32) * stride
        y_range = torch.arange(h, dtype=torch.float32) * stride
        y, x = torch.meshgrid(y_range, x_range, indexing="ij")
        y, x = y.flatten(), x.flatten()
        strides = x.new_full((x.shape[0],), stride)
        out.append(torch.stack([x, y, strides, strides], dim=-1))
    return torch.cat(out, 0)


def ref_batched_nms(boxes, scores, idxs, iou_threshold, split_thr=10000):
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    boxes_for_nms = boxes + offsets[:, None]
    if len(boxes_for_nms) < split_thr:
        keep = torchvision.ops.nms(boxes_for_nms, scores, iou_threshold)
    else:
        total_mask = scores.new_zeros(scores.size(), dtype=torch.bool)
        for i in torch.unique(idxs):
            mask = (idxs == i).nonzero(as_tuple=False).view(-1)
            total_mask[mask[torchvision.ops.nms(boxes_for_nms[mask], scores[mask], iou_threshold)]] = True
        keep = total_mask.nonzero(as_tuple=False).view(-1)
        keep = keep[scores[keep].argsort(descending=True)]
    return torch.cat([boxes[keep], scores[keep][:, None]], -1), keep


def ref_multiclass_nms(multi_bboxes, multi_scores, score_thr, iou_threshold, max_num):
    num_classes = multi_scores.size(1) - 1
    bboxes = multi_bboxes[:, None].expand(multi_scores.size(0), num_classes, 4)
    scores = multi_scores[:, :-1]
    valid_mask = scores > score_thr
    bboxes = torch.masked_select(bboxes, torch.stack((valid_mask,) * 4, -1)).view(-1, 4)
    scores = torch.masked_select(scores, valid_mask)
    labels = valid_mask.nonzero(as_tuple=False)[:, 1]
    if bboxes.numel() == 0:
        return multi_bboxes.new_zeros((0, 5)), labels
    dets, keep = ref_batched_nms(bboxes, scores, labels, iou_threshold)
    return dets[:max_num], labels[keep][:max_num]


def ref_warp_boxes(boxes, M, width, height):
    n = len(boxes)
    if not n:
        return boxes
    xy = np.ones((n * 4, 3))
    xy[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)
    xy = xy @ M.T
    xy = (xy[:, :2] / xy[:, 2:3]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    xy = np.concatenate((x.min(1), y.min(1), x.max(1), y.max(1))).reshape(4, n).T
    xy[:, [0, 2]] = xy[:, [0, 2]].clip(0, width)
    xy[:, [1, 3]] = xy[:, [1, 3]].clip(0, height)
    return xy.astype(np.float32)


def reference(path, files, score_thr, iou, max_num):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    priors = ref_center_priors(IMGSZ)
    project = torch.linspace(0, REG_MAX, REG_MAX + 1)
    out = []
    for f in files:
        img = cv2.imread(str(f))
        x, M = ref_preprocess(img, IMGSZ)
        pred = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x[None]})[0])[0]
        cls_scores, reg = pred.split([NC, 4 * (REG_MAX + 1)], dim=-1)  # scores already sigmoid in the ONNX output
        dis = F.linear(F.softmax(reg.reshape(-1, 4, REG_MAX + 1), dim=-1), project).reshape(-1, 4) * priors[:, 2:3]
        x1 = (priors[:, 0] - dis[:, 0]).clamp(min=0, max=IMGSZ[1])
        y1 = (priors[:, 1] - dis[:, 1]).clamp(min=0, max=IMGSZ[0])
        x2 = (priors[:, 0] + dis[:, 2]).clamp(min=0, max=IMGSZ[1])
        y2 = (priors[:, 1] + dis[:, 3]).clamp(min=0, max=IMGSZ[0])
        bboxes = torch.stack([x1, y1, x2, y2], -1)
        score = torch.cat([cls_scores, cls_scores.new_zeros(cls_scores.shape[0], 1)], dim=1)
        dets, labels = ref_multiclass_nms(bboxes, score, score_thr, iou, max_num)
        dets = dets.numpy()
        boxes = ref_warp_boxes(dets[:, :4], np.linalg.inv(M), img.shape[1], img.shape[0])
        out.append((boxes, dets[:, 4], labels.numpy()))
    return out


@pytest.fixture(scope="module")
def nanodet_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = nanodet_model(nc=NC, reg_max=REG_MAX)
    calibrate(model, IMGSZ, bgr_to_input(scale=1.0, rgb=False, mean=NANODET_MEAN, std=NANODET_STD))
    return export_onnx(model, IMGSZ, tmp_path_factory.mktemp("nanodet") / "nanodet_plus.onnx")


def test_parity(nanodet_onnx, image_dir):
    files = sorted(image_dir.iterdir())
    with unideploy.load(nanodet_onnx, conf=0.35, iou=0.6, max_det=100) as pred:
        assert pred.adapter.name == "nanodet"  # recognised: nc + 32 values per point of strides 8..64
        spec = pred.spec
        assert (spec.channel_order, spec.scale, spec.mean, spec.std, spec.resize) == (
            "bgr", 1.0, NANODET_MEAN, NANODET_STD, "stretch")
        ours = pred(files)
    total = 0
    for f, det, (b, s, c) in zip(files, ours, reference(nanodet_onnx, files, 0.35, 0.6, 100)):
        assert_same_detections(det, b, s, c, where=f.name)
        total += len(det)
    assert total > 10 * len(files), "too few boxes for the comparison to exercise NMS"
    assert max(len(d) for d in ours) == 100  # max_num reached somewhere


def test_preprocessing_matches_warp(nanodet_onnx, image_dir):
    with unideploy.load(nanodet_onnx) as pred:
        for f in sorted(image_dir.iterdir())[:8]:
            img = cv2.imread(str(f))
            x, _ = pred.preprocess(img)
            ref, _ = ref_preprocess(img, IMGSZ)
            np.testing.assert_allclose(x, ref, atol=1e-4, err_msg=f.name)


def test_multilabel_candidates_and_classes(nanodet_onnx, image_dir):
    """A point may yield boxes of several classes (mmdet multiclass_nms); ``classes`` keeps the asked ones."""
    files = sorted(image_dir.iterdir())[:6]
    with unideploy.load(nanodet_onnx, conf=0.3, iou=0.6, max_det=100000, classes=[2, 5]) as pred:
        ours = pred(files)
    for f, det, (b, s, c) in zip(files, ours, reference(nanodet_onnx, files, 0.3, 0.6, 100000)):
        keep = np.isin(c, [2, 5])
        assert_same_detections(det, b[keep], s[keep], c[keep], where=f.name)


def test_cli_predict_family(nanodet_onnx, image_dir, tmp_path):
    from unideploy.cli.main import main

    assert main(["predict", str(nanodet_onnx), str(image_dir), "--family", "nanodet", "--conf", "0.4",
                 "--save-txt", str(tmp_path / "txt"), "--quiet"]) == 0
    assert len(list((tmp_path / "txt").glob("*.txt"))) == len(list(image_dir.iterdir()))
