"""YOLOv5 (anchor-based) family: parity with YOLOv5's own letterbox, non_max_suppression and scale_boxes.

Two references:
* always: a tiny model with YOLOv5's export-mode ``Detect`` head, and YOLOv5 7.0's ``letterbox``,
  ``non_max_suppression`` (multi_label=False) and ``scale_boxes`` reproduced below in torch/torchvision;
* when the ``yolov5`` package is importable: ``yolov5n.yaml`` built by the package (random init), exported to
  ONNX, against the package's own functions.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import unideploy
from family_helpers import bgr_to_input, calibrate, export_onnx, yolov5_model
from parity import assert_same_detections

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("onnx")

IMGSZ = (256, 320)
NAMES = {i: f"thing{i}" for i in range(6)}


# -- YOLOv5 7.0 reference (utils/augmentations.py, utils/general.py), multi_label=False -----------------

def ref_letterbox(im, new_shape, color=(114, 114, 114)):
    shape = im.shape[:2]
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))
    dw, dh = (new_shape[1] - new_unpad[0]) / 2, (new_shape[0] - new_unpad[1]) / 2
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)


def ref_nms(prediction, conf_thres, iou_thres, classes=None, agnostic=False, max_det=300):
    xc = prediction[..., 4] > conf_thres
    output = []
    for xi, x in enumerate(prediction):
        x = x[xc[xi]].clone()
        x[:, 5:] *= x[:, 4:5]
        box = torchvision.ops.box_convert(x[:, :4], "cxcywh", "xyxy")
        conf, j = x[:, 5:].max(1, keepdim=True)
        x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes)).any(1)]
        x = x[x[:, 4].argsort(descending=True)[:30000]]
        c = x[:, 5:6] * (0 if agnostic else 7680)
        i = torchvision.ops.nms(x[:, :4] + c, x[:, 4], iou_thres)[:max_det]
        output.append(x[i])
    return output


def ref_scale_boxes(img1_shape, boxes, img0_shape):
    gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
    pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    boxes[:, [0, 2]] -= pad[0]
    boxes[:, [1, 3]] -= pad[1]
    boxes[:, :4] /= gain
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, img0_shape[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, img0_shape[0])
    return boxes


def reference(path, files, imgsz, conf, iou, max_det, letterbox=ref_letterbox, nms=ref_nms, scale=ref_scale_boxes,
              **nms_kw):
    """YOLOv5's detect.py on the exported file: its preprocessing, ONNX Runtime (as DetectMultiBackend), its NMS."""
    session = ort_session(path)
    out = []
    for f in files:
        img0 = cv2.imread(str(f))
        im = letterbox(img0, imgsz)
        im = np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])
        x = (torch.from_numpy(im).float()[None] / 255).numpy()
        pred = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x})[0])
        det = nms(pred, conf, iou, max_det=max_det, **nms_kw)[0]
        det[:, :4] = scale(imgsz, det[:, :4], img0.shape)
        out.append((det, img0.shape[:2]))
    return out


def ort_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def v5_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = yolov5_model(nc=len(NAMES))
    calibrate(model, IMGSZ, bgr_to_input())
    d = tmp_path_factory.mktemp("yolov5")
    path = export_onnx(model, IMGSZ, d / "tiny_yolov5.onnx", metadata={"stride": 32, "names": str(NAMES)})
    return model, path


def test_recognised_and_parity(v5_onnx, image_dir):
    model, path = v5_onnx
    files = sorted(image_dir.iterdir())
    with unideploy.load(path, conf=0.85, iou=0.3, max_det=10000) as pred:
        assert pred.adapter.name == "yolov5" and pred.spec.family == "yolov5"  # recognised without --family
        assert (pred.spec.channel_order, pred.spec.resize, pred.spec.scale) == ("rgb", "letterbox", 1 / 255)
        ours = pred(files)
    ref = reference(path, files, IMGSZ, 0.85, 0.3, 10000)
    total = 0
    for f, det, (r, shape) in zip(files, ours, ref):
        assert det.image_shape == shape
        assert_same_detections(det, r[:, :4].numpy(), r[:, 4].numpy(), r[:, 5].numpy(), where=f.name)
        total += len(det)
    print("boxes", total)
    assert total > 20 * len(files), "too few boxes for the comparison to exercise NMS"


def test_parity_options(v5_onnx, image_dir):
    """classes, agnostic NMS and max_det follow yolov5's non_max_suppression."""
    model, path = v5_onnx
    files = sorted(image_dir.iterdir())[:10]
    with unideploy.load(path, family="yolov5", conf=0.4, iou=0.5, max_det=7, agnostic=True, classes=[1, 3]) as pred:
        ours = pred(files)
    ref = reference(path, files, IMGSZ, 0.4, 0.5, 7, classes=[1, 3], agnostic=True)
    for f, det, (r, _) in zip(files, ours, ref):
        assert len(det) <= 7 and set(det.class_id.tolist()) <= {1, 3}
        assert_same_detections(det, r[:, :4].numpy(), r[:, 4].numpy(), r[:, 5].numpy(), where=f.name)


def test_cli_predict_family(v5_onnx, image_dir, tmp_path, capsys):
    from unideploy.cli.main import main

    _, path = v5_onnx
    out = tmp_path / "r.json"
    assert main(["predict", str(path), str(image_dir), "--family", "yolov5", "--conf", "0.5", "--save-json", str(out),
                 "--save-txt", str(tmp_path / "txt"), "--quiet"]) == 0
    records = json.loads(out.read_text())
    with unideploy.load(path, conf=0.5) as pred:
        dets = pred(sorted(image_dir.iterdir()))
    assert len(records) == sum(len(d) for d in dets) > 0
    assert {r["category_id"] for r in records} <= {k + 1 for k in NAMES}
    assert len(list((tmp_path / "txt").glob("*.txt"))) == len(dets)


# -- optional: the real YOLOv5 code (PyPI ``yolov5``) --------------------------------------------------

def test_against_yolov5_package(image_dir, tmp_path):
    yolov5 = pytest.importorskip("yolov5", reason="the yolov5 package is not installed (optional reference)")
    from pathlib import Path

    from yolov5.models.yolo import Detect, Model
    from yolov5.utils.augmentations import letterbox
    from yolov5.utils.general import non_max_suppression, scale_boxes

    torch.manual_seed(0)
    model = Model(str(Path(yolov5.__file__).parent / "models" / "yolov5n.yaml"), nc=80).eval()
    calibrate(model, IMGSZ, bgr_to_input())
    det_layer = model.model[-1]
    with torch.no_grad():
        for conv in det_layer.m:
            b = conv.bias.view(det_layer.na, -1)
            b[:, 4] += 5.0
            b[:, 5:] += 3.0
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace, m.export = False, True

    path = export_onnx(model, IMGSZ, tmp_path / "yolov5n.onnx",
                       metadata={"stride": 32, "names": str(dict(enumerate(range(80))))})
    files = sorted(image_dir.iterdir())
    with unideploy.load(path, conf=0.05, iou=0.45, max_det=300) as pred:
        assert pred.adapter.name == "yolov5"
        ours = pred(files)
    ref = reference(path, files, IMGSZ, 0.05, 0.45, 300,
                    letterbox=lambda im, s: letterbox(im, s, auto=False)[0],
                    nms=lambda p, c, i, max_det: non_max_suppression(p, c, i, max_det=max_det),
                    scale=lambda s1, b, s0: scale_boxes(s1, b, s0))
    total = 0
    for f, det, (r, _) in zip(files, ours, ref):
        assert_same_detections(det, r[:, :4].numpy(), r[:, 4].numpy(), r[:, 5].numpy(), where=f.name)
        total += len(det)
    assert total > 10 * len(files)
