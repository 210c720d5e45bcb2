"""Original YOLOv5-seg (v7.0 layout): recognised from its two outputs, boxes as the YOLOv5 detector's NMS on the same
rows, masks as Ultralytics' ``process_mask_native`` on the kept rows' coefficients (the ``--retina-masks`` path)."""

from __future__ import annotations

import numpy as np
import pytest

import unideploy
from family_helpers import bgr_to_input, calibrate, export_onnx, yolov5_model
from unideploy.core.ops.masks import mask_iou
from unideploy.testing import write_scenes

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

IMGSZ = (128, 160)
NC, NM = 3, 8


@pytest.fixture(scope="module")
def v5seg(tmp_path_factory):
    torch.manual_seed(0)
    det = yolov5_model(nc=NC + NM, imgsz=IMGSZ)  # the last NM "classes" serve as the mask coefficients
    calibrate(det, IMGSZ, bgr_to_input())

    class V5Seg(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.det = det
            self.proto = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Conv2d(3, NM, 3, padding=1))

        def forward(self, x):
            out = self.det(x)
            coeffs = (out[..., 5 + NC:] - 0.5) * 8  # spread around 0 like raw coefficients
            return torch.cat([out[..., :5 + NC], coeffs], 2), self.proto(x - 0.5)

    d = tmp_path_factory.mktemp("v5seg")
    path = export_onnx(V5Seg().eval(), IMGSZ, d / "yolov5n-seg.onnx", ("output0", "output1"),
                       {"stride": 32, "names": {i: f"c{i}" for i in range(NC)}})
    return path, write_scenes(d / "images", [(96, 160), (200, 120), (128, 128), (61, 333)], seed=2)


def _run_and_nms(p, o, f):
    """One image through the predictor: (image, mapping, raw head rows, prototypes, the adapter's result, and the
    YOLOv5 detector's NMS on the same rows without the coefficient columns: boxes, scores, classes, row indices)."""
    img = unideploy.read_image(f)
    x, info = p.preprocess(img)
    raw = p.infer(x[None])
    out = next(r for r in raw if r.ndim == 3)[0]
    proto = next(r for r in raw if r.ndim == 4)[0]
    seg = p.adapter.postprocess(raw, [info], o)[0]
    nms = p.adapter._nms(out[:, :-NM], o.conf, o.iou, o.max_det, o.agnostic, o.classes, return_rows=True)
    return img, info, out, proto, seg, nms


def test_yolov5_seg_boxes_and_masks(v5seg):
    from ultralytics.utils import ops

    path, files = v5seg
    with unideploy.load(path, conf=0.25) as p:
        assert p.adapter.name == "yolov5_seg" and p.task == "segment"
        o = p.adapter.resolve_options(p.options)
        n_total = 0
        for f in files:
            img, info, out, proto, seg, (boxes, scores, cls, rows) = _run_and_nms(p, o, f)
            from unideploy.core.ops.letterbox import unletterbox_boxes

            unletterbox_boxes(boxes, info)
            ref = ops.process_mask_native(torch.from_numpy(proto), torch.from_numpy(out[rows, -NM:]),
                                          torch.from_numpy(boxes), info.orig_shape).numpy().astype(bool)
            keep = ref.any(axis=(1, 2))
            assert len(seg) == int(keep.sum())
            assert np.allclose(seg.xyxy, boxes[keep]) and np.allclose(seg.confidence, scores[keep])
            assert (seg.class_id == cls[keep]).all() and seg.masks.data.shape[1:] == img.shape[:2]
            if len(seg):
                ious = mask_iou(seg.masks.data, ref[keep]).diagonal()
                assert ious.mean() >= 0.99 and ious.min() >= 0.9, ious
            n_total += len(seg)
        assert n_total >= 5, "the test model should find instances"


def test_yolov5_seg_default_masks(v5seg):
    """``retina_masks=False``: YOLOv5's default ``process_mask(upsample=True)`` at the input size on the boxes in
    input pixels, brought to the image as Ultralytics' plotting does (``scale_masks``, > 0.5)."""
    from ultralytics.utils import ops

    path, files = v5seg
    with unideploy.load(path, conf=0.25, retina_masks=False) as p:
        o = p.adapter.resolve_options(p.options)
        assert o.retina_masks is False
        n_total = 0
        for f in files:
            img, info, out, proto, seg, (boxes, scores, cls, rows) = _run_and_nms(p, o, f)
            ref_in = ops.process_mask(torch.from_numpy(proto), torch.from_numpy(out[rows, -NM:]),
                                      torch.from_numpy(boxes.copy()), IMGSZ, upsample=True)
            keep = ref_in.flatten(1).amax(1).numpy() > 0
            ref = (ops.scale_masks(ref_in[None].float(), img.shape[:2])[0] > 0.5).numpy()[keep]
            assert len(seg) == int(keep.sum()) and np.allclose(seg.confidence, scores[keep])
            assert seg.masks.data.shape == ref.shape
            differ = (seg.masks.data != ref).sum()
            assert differ <= len(seg), f"{f.name}: {differ} of {ref.sum()} mask pixels differ"
            n_total += len(seg)
        assert n_total >= 5, "the test model should find instances"


def test_ultralytics_seg_layout_is_not_taken_for_yolov5(v5seg):
    from unideploy.runtime.families.yolo_seg import YoloSegAdapter
    from unideploy.runtime.backends.base import TensorInfo
    from unideploy.core.spec import ModelSpec

    spec = ModelSpec(imgsz=(640, 640))
    v8 = [TensorInfo("output0", (1, 116, 8400), "float32"), TensorInfo("output1", (1, 32, 160, 160), "float32")]
    v5 = [TensorInfo("output0", (1, 25200, 117), "float32"), TensorInfo("output1", (1, 32, 160, 160), "float32")]
    from unideploy.runtime.families.yolo_seg import Yolov5SegAdapter

    assert YoloSegAdapter.matches(spec, v8) and not Yolov5SegAdapter.matches(spec, v8)
    assert Yolov5SegAdapter.matches(spec, v5) and not YoloSegAdapter.matches(spec, v5)
