"""RT-DETR family: the three export layouts, no NMS.

* Ultralytics >= 8.4 ``(B, 300, 6)``: ``RTDETR("rtdetr-l.yaml")`` (random init) exported by Ultralytics, against
  Ultralytics' own predict on the same file (slow: the export takes ~40 s on 2 cores);
* older Ultralytics ``(B, 300, 4 + nc)`` and the PaddleDetection / lyuwenyu RT-DETR split ``boxes`` + ``logits``
  outputs: graphs built to those layouts, against their postprocessing reproduced below (Ultralytics 8.3
  ``RTDETRPredictor.postprocess``; RT-DETR's ``RTDETRPostProcessor`` with focal loss: sigmoid, top 300 over
  query x class).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from family_helpers import bgr_to_input, calibrate, export_onnx, rtdetr_model
from parity import assert_same_detections

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

IMGSZ = (320, 320)
NC = 6


def stretch_input(img, imgsz):
    """Ultralytics LetterBox(scale_fill=True) / RT-DETR's Resize((h, w)): stretch, RGB, /255, NCHW."""
    x = cv2.resize(img, (imgsz[1], imgsz[0]), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(x[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255


def run_onnx(path, files, imgsz):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for f in files:
        img = cv2.imread(str(f))
        yield img, [torch.from_numpy(o) for o in s.run(None, {s.get_inputs()[0].name: stretch_input(img, imgsz)})]


def xywh2xyxy(b):
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def clip(xyxy, shape):
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clamp(0, shape[1])
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clamp(0, shape[0])
    return xyxy


def ref_scores_layout(path, files, conf, classes=None, max_det=300):
    """Ultralytics 8.3 RTDETRPredictor.postprocess on a (B, Q, 4 + nc) output (boxes clipped afterwards)."""
    out = []
    for img, (preds,) in run_onnx(path, files, IMGSZ):
        nd = preds.shape[-1]
        bboxes, scores = preds.split((4, nd - 4), dim=-1)
        bbox = xywh2xyxy(bboxes[0])
        score, cls = scores[0].max(-1, keepdim=True)
        idx = score.squeeze(-1) > conf
        if classes is not None:
            idx = (cls == torch.tensor(classes)).any(1) & idx
        pred = torch.cat([bbox, score, cls.float()], dim=-1)[idx]
        pred = pred[pred[:, 4].argsort(descending=True)][:max_det]
        oh, ow = img.shape[:2]
        pred[..., [0, 2]] *= ow
        pred[..., [1, 3]] *= oh
        out.append(clip(pred, img.shape).numpy())
    return out


def ref_split_layout(path, files, conf, boxes_first=True, num_top_queries=300):
    """RT-DETR's RTDETRPostProcessor (use_focal_loss=True) on boxes + logits, then ``score > conf``."""
    out = []
    for img, outs in run_onnx(path, files, IMGSZ):
        boxes, logits = outs if boxes_first else outs[::-1]
        oh, ow = img.shape[:2]
        bbox_pred = xywh2xyxy(boxes) * torch.tensor([ow, oh, ow, oh], dtype=torch.float32)
        scores = torch.sigmoid(logits)
        scores, index = torch.topk(scores.flatten(1), num_top_queries, dim=-1)
        labels = index % NC
        index = index // NC
        b = bbox_pred.gather(dim=1, index=index.unsqueeze(-1).repeat(1, 1, bbox_pred.shape[-1]))
        keep = scores[0] > conf
        pred = torch.cat([b[0][keep], scores[0][keep, None], labels[0][keep, None].float()], -1)
        out.append(clip(pred, img.shape).numpy())
    return out


def check(ours, ref, files):
    total = 0
    for f, det, r in zip(files, ours, ref):
        assert_same_detections(det, r[:, :4], r[:, 4], r[:, 5], where=f.name)
        total += len(det)
    return total


@pytest.fixture(scope="module")
def rtdetr_graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("rtdetr")
    names = str({i: f"c{i}" for i in range(NC)})
    out = {}
    torch.manual_seed(0)
    model = rtdetr_model(nc=NC, layout="scores", imgsz=IMGSZ)
    calibrate(model, IMGSZ, bgr_to_input())
    # older Ultralytics metadata: no "head" key; the description names the model
    out["scores_ultralytics"] = export_onnx(model, IMGSZ, d / "rtdetr_old.onnx", metadata={
        "description": "Ultralytics rtdetr-l model ", "author": "Ultralytics", "task": "detect", "stride": 32,
        "imgsz": str(list(IMGSZ)), "names": names})
    out["scores_names"] = export_onnx(model, IMGSZ, d / "rtdetr_names.onnx", metadata={"names": names})
    torch.manual_seed(1)
    split = rtdetr_model(nc=NC, layout="split", imgsz=IMGSZ)
    calibrate(split, IMGSZ, bgr_to_input())
    out["split"] = export_onnx(split, IMGSZ, d / "rtdetr_split.onnx", output_names=("pred_boxes", "pred_logits"))

    class LogitsFirst(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            b, lg = self.m(x)
            return lg, b

    out["split_swapped"] = export_onnx(LogitsFirst(split).eval(), IMGSZ, d / "rtdetr_split_swapped.onnx",
                                       output_names=("logits", "boxes"))
    return out


@pytest.mark.parametrize("which", ["scores_ultralytics", "scores_names"])
def test_scores_layout(rtdetr_graphs, image_dir, which):
    """(B, Q, 4 + nc): older Ultralytics exports, recognised from their metadata or from the layout + names."""
    files = sorted(image_dir.iterdir())
    with unideploy.load(rtdetr_graphs[which], conf=0.3) as pred:
        assert pred.adapter.name == "rtdetr" and pred.spec.resize == "stretch"
        ours = pred(files)
        assert pred.adapter.layout == "scores"
    total = check(ours, ref_scores_layout(rtdetr_graphs[which], files, 0.3), files)
    assert 10 * len(files) < total < 300 * len(files)  # the threshold removed some queries


def test_scores_layout_classes_max_det(rtdetr_graphs, image_dir):
    files = sorted(image_dir.iterdir())[:10]
    path = rtdetr_graphs["scores_names"]
    with unideploy.load(path, conf=0.2, classes=[1, 4], max_det=20) as pred:
        ours = pred(files)
    check(ours, ref_scores_layout(path, files, 0.2, classes=[1, 4], max_det=20), files)


@pytest.mark.parametrize("which", ["split", "split_swapped"])
def test_split_layout(rtdetr_graphs, image_dir, which):
    """boxes (B, Q, 4) + logits (B, Q, nc), in either order: recognised without metadata."""
    files = sorted(image_dir.iterdir())
    with unideploy.load(rtdetr_graphs[which], conf=0.4) as pred:
        assert pred.adapter.name == "rtdetr"
        ours = pred(files)
        assert pred.adapter.layout == "split"
    total = check(ours, ref_split_layout(rtdetr_graphs[which], files, 0.4, boxes_first=which == "split"), files)
    assert total > 10 * len(files)
    assert any(len(np.unique(d.xyxy, axis=0)) < len(d) for d in ours)  # one query can give several classes


def test_cli_predict_family(rtdetr_graphs, image_dir, tmp_path):
    from unideploy.cli.main import main

    out = tmp_path / "r.json"
    assert main(["predict", str(rtdetr_graphs["split"]), str(image_dir), "--family", "rtdetr", "--conf", "0.5",
                 "--save-json", str(out), "--quiet"]) == 0
    assert len(json.loads(out.read_text())) > 0


# -- Ultralytics >= 8.4: (B, 300, 6) -------------------------------------------------------------------------

@pytest.mark.slow
def test_ultralytics_rtdetr_export(image_dir, tmp_path):
    pytest.importorskip("ultralytics")
    from ultralytics import RTDETR

    imgsz = 256
    cwd = os.getcwd()
    os.chdir(tmp_path)  # Ultralytics writes beside the model / in the cwd
    try:
        torch.manual_seed(0)
        model = RTDETR("rtdetr-l.yaml")
        calibrate(model.model, (imgsz, imgsz), bgr_to_input())
        with torch.no_grad():  # random init scores every query ~0.04: spread them over (0.3, 0.7)
            for lin in model.model.model[-1].dec_score_head:
                lin.bias.normal_(-3.0, 1.0)
        path = Path(model.export(format="onnx", imgsz=imgsz, simplify=True, verbose=False)).resolve()
    finally:
        os.chdir(cwd)
    files = sorted(image_dir.iterdir())[:12]
    with unideploy.load(path, conf=0.4) as pred:
        assert pred.adapter.name == "rtdetr" and pred.spec.family == "rtdetr"  # from the metadata's head
        assert pred.spec.resize == "stretch"
        ours = pred(files)
        assert pred.adapter.layout == "topk"
    ref_model = RTDETR(str(path))
    total = 0
    for f, det in zip(files, ours):
        r = ref_model.predict(str(f), conf=0.4, imgsz=imgsz, verbose=False)[0]
        b = r.boxes
        xyxy = clip(b.xyxy.clone(), r.orig_shape).numpy()  # Ultralytics leaves RT-DETR boxes unclipped
        assert_same_detections(det, xyxy, b.conf.numpy(), b.cls.numpy(), where=f.name)
        assert det.image_shape == r.orig_shape
        total += len(det)
    assert 10 * len(files) < total < 300 * len(files)
    # read as the YOLO end-to-end layout (x1, y1, x2, y2 in letterboxed pixels) the same output is wrong:
    with unideploy.load(path, conf=0.4, family="yolo") as yolo:
        wrong = yolo(files[0])
    assert len(wrong) == len(ours[0]) and np.abs(wrong.xyxy - ours[0].xyxy).max() > 50
