"""Multi-label NMS (``multi_label=True``, what Ultralytics' validators run) against Ultralytics'
``non_max_suppression`` on the same raw outputs of random-weight detect, seg and OBB heads; single-label unchanged.

The raw outputs come from the randomised torch models (:func:`unideploy.testing.randomise`) on generated scenes, so
thousands of (box, class) pairs pass ``conf`` and many boxes are kept under several classes.
"""

from __future__ import annotations

import numpy as np
import pytest

from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.options import PostprocessOptions
from unideploy.core.spec import ModelSpec
from unideploy.runtime.families.yolo import YoloAdapter, yolo_nms
from unideploy.runtime.families.yolo_obb import YoloObbAdapter
from unideploy.runtime.families.yolo_seg import YoloSegAdapter

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

IMGSZ = 160  # 525 boxes x 80 classes: over Ultralytics' 30000-candidate cut at conf 0.001 with multi-label


@pytest.fixture(scope="module")
def raw() -> dict[str, tuple[np.ndarray, np.ndarray | None, int]]:
    """{task: (head output (B, 4+nc+extra, N), prototypes or None, nc)} of randomised models on 3 scenes."""
    from ultralytics import YOLO

    from unideploy.testing import randomise, scene

    rng = np.random.default_rng(11)
    x = np.stack([scene(rng, IMGSZ, IMGSZ) for _ in range(3)])[..., ::-1].transpose(0, 3, 1, 2).copy()
    out = {}
    for task, cfg in (("detect", "yolov8n.yaml"), ("segment", "yolov8n-seg.yaml"), ("obb", "yolov8n-obb.yaml")):
        torch.manual_seed(0)
        model = YOLO(cfg)
        randomise(model.model, IMGSZ)
        with torch.no_grad():
            y = model.model(torch.from_numpy(x).float() / 255)[0]
        pred, proto = (y[0], y[1]) if isinstance(y, (list, tuple)) else (y, None)
        out[task] = (pred.numpy(), None if proto is None else proto.numpy(), len(model.model.names))
    return out


def _reference(pred: np.ndarray, nc: int, rotated: bool, **kw) -> list[np.ndarray]:
    import torchvision  # noqa: F401  (Ultralytics uses torchvision's NMS when it is imported, as in its val)
    from ultralytics.utils.nms import non_max_suppression

    return [non_max_suppression(torch.from_numpy(p[None]), nc=nc, rotated=rotated, max_time_img=60, **kw)[0].numpy()
            for p in pred]  # one image a call, no time limit: every image is processed whatever the machine load


CASES = [  # (conf, iou, max_det, agnostic, classes)
    (0.001, 0.7, 300, False, None),  # Ultralytics val
    (0.25, 0.7, 300, False, None),
    (0.05, 0.5, 40, False, None),
    (0.01, 0.7, 300, False, [0, 3, 17, 41]),
    (0.05, 0.6, 300, True, None),
]


@pytest.mark.parametrize("task", ["detect", "segment"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"conf{c[0]}-iou{c[1]}-max{c[2]}-agn{int(c[3])}-cls{c[4] is not None}")
def test_multi_label_nms_equals_ultralytics(raw, task, case):
    conf, iou, max_det, agnostic, classes = case
    pred_b, _, nc = raw[task]
    ref = _reference(pred_b, nc, False, conf_thres=conf, iou_thres=iou, max_det=max_det, agnostic=agnostic,
                     classes=classes, multi_label=True)
    repeated = 0
    for pred, r in zip(pred_b, ref):
        boxes, scores, cls, idx = yolo_nms(pred, nc, conf, iou, max_det, agnostic, classes, multi_label=True)
        assert len(boxes) == len(r) > 0
        np.testing.assert_array_equal(cls, r[:, 5].astype(np.int64))
        np.testing.assert_allclose(scores, r[:, 4], rtol=0, atol=1e-6)
        np.testing.assert_allclose(boxes, r[:, :4], rtol=0, atol=1e-3)
        # the column index selects the extra channels of each kept row (mask coefficients follow the duplicates)
        np.testing.assert_allclose(pred[4 + nc:, idx].T, r[:, 6:], rtol=0, atol=1e-6)
        repeated += len(idx) - len(np.unique(idx))
        if classes is not None:
            assert set(cls.tolist()) <= set(classes)
    if not agnostic:
        assert repeated > 0  # boxes kept under more than one class: the case single-label NMS never produces


#: Ultralytics' rotated NMS holds the N x N IoU matrix of its candidates: two images, a few thousand pairs each
OBB_CASES = [(0.25, 0.7, 300, False, None), (0.4, 0.7, 300, False, None), (0.1, 0.7, 300, False, [0, 3, 17, 41]),
             (0.3, 0.6, 300, True, None)]


@pytest.mark.parametrize("case", OBB_CASES, ids=["conf0.25", "conf0.4", "classes", "agnostic"])
def test_multi_label_obb_equals_ultralytics(raw, case):
    conf, iou, max_det, agnostic, classes = case
    pred_b, _, nc = raw["obb"]
    pred_b = pred_b[:2]
    ref = _reference(pred_b, nc, True, conf_thres=conf, iou_thres=iou, max_det=max_det, agnostic=agnostic,
                     classes=classes, multi_label=True)
    adapter = YoloObbAdapter(ModelSpec(task="obb", imgsz=(IMGSZ, IMGSZ), names={i: str(i) for i in range(nc)}))
    for pred, r in zip(pred_b, ref):
        rb, scores, cls = adapter._nms(pred, conf, iou, max_det, agnostic, classes, multi_label=True)
        assert len(rb) == len(r) > 0
        np.testing.assert_array_equal(cls, r[:, 5].astype(np.int64))
        np.testing.assert_allclose(scores, r[:, 4], rtol=0, atol=1e-6)
        np.testing.assert_allclose(rb, np.concatenate([r[:, :4], r[:, -1:]], 1), rtol=0, atol=1e-4)


@pytest.mark.parametrize("task", ["detect", "segment", "obb"])
def test_single_label_is_unchanged_and_the_default(raw, task):
    """Default options keep one class per box: equal to Ultralytics' ``multi_label=False`` (its predict)."""
    pred_b, _, nc = raw[task]
    conf = 0.1 if task == "obb" else 0.001
    ref = _reference(pred_b, nc, task == "obb", conf_thres=conf, iou_thres=0.7, max_det=300, multi_label=False)
    assert PostprocessOptions().multi_label is False
    for pred, r in zip(pred_b, ref):
        if task == "obb":
            adapter = YoloObbAdapter(ModelSpec(task="obb", imgsz=(IMGSZ, IMGSZ), names={i: str(i) for i in range(nc)}))
            _, scores, cls = adapter._nms(pred, conf, 0.7, 300, False, None)
            idx = None
        else:
            _, scores, cls, idx = yolo_nms(pred, nc, conf, 0.7, 300, False, None)
            assert len(np.unique(idx)) == len(idx)
        np.testing.assert_array_equal(cls, r[:, 5].astype(np.int64))
        np.testing.assert_allclose(scores, r[:, 4], rtol=0, atol=1e-6)


def test_adapters_take_the_option(raw):
    """``PostprocessOptions(multi_label=True)`` reaches the detect and seg adapters' NMS (mask per kept row)."""
    names = {i: str(i) for i in range(raw["detect"][2])}
    info = [LetterboxInfo((IMGSZ, IMGSZ), (IMGSZ, IMGSZ), (0, 0), (1.0, 1.0))]  # the image is the input
    det = YoloAdapter(ModelSpec(task="detect", imgsz=(IMGSZ, IMGSZ), names=names))
    pred = raw["detect"][0][:1]
    one = det.postprocess([pred], info, PostprocessOptions(conf=0.001))[0]
    many = det.postprocess([pred], info, PostprocessOptions(conf=0.001, multi_label=True))[0]
    _, s_ref, c_ref, _ = yolo_nms(pred[0], len(names), 0.001, 0.7, 300, False, None, multi_label=True)
    assert len(many) == len(c_ref) and np.array_equal(many.class_id, c_ref) and len(many) != len(one)
    seg_pred, proto, nc = raw["segment"]
    seg = YoloSegAdapter(ModelSpec(task="segment", imgsz=(IMGSZ, IMGSZ), names=names))
    r = seg.postprocess([seg_pred[:1], proto[:1]], info, PostprocessOptions(conf=0.25, multi_label=True))[0]
    _, _, c_ref, idx = yolo_nms(seg_pred[0], nc, 0.25, 0.7, 300, False, None, multi_label=True)
    assert len(idx) > len(np.unique(idx)) and len(r) > 0 and r.masks.data.shape[0] == len(r)
    assert set(r.class_id.tolist()) <= set(c_ref.tolist())


def test_gpu_nms_refuses_multi_label():
    """The device NMS keeps one class per box: asked for multi-label it says so instead of ignoring it."""
    from unideploy.core.errors import OptionError
    from unideploy.runtime.gpu.postprocess import nms_batch

    info = [LetterboxInfo((IMGSZ, IMGSZ), (IMGSZ, IMGSZ), (0, 0), (1.0, 1.0))]
    opts = PostprocessOptions(multi_label=True).resolved()
    with pytest.raises(OptionError, match="multi_label is not available on the GPU predictor"):
        nms_batch(torch.zeros(1, 6, 10), info, opts, 2)
    with pytest.raises(OptionError, match="multi_label must be True or False, got 'yes'"):
        PostprocessOptions(multi_label="yes")
