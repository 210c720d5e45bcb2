"""YOLOX family: both export layouts (raw grid outputs, decoded in the graph) against YOLOX's own code.

Reference: YOLOX 0.3.0's ``preproc`` (BGR, 0-255, top-left paste on 114 with ``int()`` sizes), ``demo_postprocess``
(grid decoding of raw outputs) and ``utils.boxes.postprocess`` (obj x cls >= conf, class-aware ``batched_nms``),
boxes divided by the resize ratio, reproduced below and run on the exported file with ONNX Runtime, as YOLOX's
ONNX demo does. When the ``yolox`` package is importable, YOLOX-Nano built from its exp (random init) is checked
against the package's own functions too.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import unideploy
from family_helpers import bgr_to_input, calibrate, export_onnx, yolox_model
from parity import assert_same_detections

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("onnx")

IMGSZ = (256, 320)
NC = 5


# -- YOLOX 0.3.0 reference (yolox/data/data_augment.py, yolox/utils/demo_utils.py, yolox/utils/boxes.py) ------

def ref_preproc(img, input_size, swap=(2, 0, 1)):
    padded_img = np.ones((input_size[0], input_size[1], 3), dtype=np.uint8) * 114
    r = min(input_size[0] / img.shape[0], input_size[1] / img.shape[1])
    resized_img = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)),
                             interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    padded_img[: int(img.shape[0] * r), : int(img.shape[1] * r)] = resized_img
    padded_img = padded_img.transpose(swap)
    return np.ascontiguousarray(padded_img, dtype=np.float32), r


def ref_demo_postprocess(outputs, img_size, p6=False):
    grids, expanded_strides = [], []
    strides = [8, 16, 32] if not p6 else [8, 16, 32, 64]
    hsizes = [img_size[0] // stride for stride in strides]
    wsizes = [img_size[1] // stride for stride in strides]
    for hsize, wsize, stride in zip(hsizes, wsizes, strides):
        xv, yv = np.meshgrid(np.arange(wsize), np.arange(hsize))
        grid = np.stack((xv, yv), 2).reshape(1, -1, 2)
        grids.append(grid)
        expanded_strides.append(np.full((*grid.shape[:2], 1), stride))
    grids = np.concatenate(grids, 1)
    expanded_strides = np.concatenate(expanded_strides, 1)
    outputs[..., :2] = (outputs[..., :2] + grids) * expanded_strides
    outputs[..., 2:4] = np.exp(outputs[..., 2:4]) * expanded_strides
    return outputs


def ref_postprocess(prediction, num_classes, conf_thre=0.7, nms_thre=0.45, class_agnostic=False):
    box_corner = prediction.new(prediction.shape)
    box_corner[:, :, 0] = prediction[:, :, 0] - prediction[:, :, 2] / 2
    box_corner[:, :, 1] = prediction[:, :, 1] - prediction[:, :, 3] / 2
    box_corner[:, :, 2] = prediction[:, :, 0] + prediction[:, :, 2] / 2
    box_corner[:, :, 3] = prediction[:, :, 1] + prediction[:, :, 3] / 2
    prediction[:, :, :4] = box_corner[:, :, :4]
    output = [None for _ in range(len(prediction))]
    for i, image_pred in enumerate(prediction):
        class_conf, class_pred = torch.max(image_pred[:, 5: 5 + num_classes], 1, keepdim=True)
        conf_mask = (image_pred[:, 4] * class_conf.squeeze() >= conf_thre).squeeze()
        detections = torch.cat((image_pred[:, :5], class_conf, class_pred.float()), 1)[conf_mask]
        if not detections.size(0):
            continue
        if class_agnostic:
            keep = torchvision.ops.nms(detections[:, :4], detections[:, 4] * detections[:, 5], nms_thre)
        else:
            keep = torchvision.ops.batched_nms(detections[:, :4], detections[:, 4] * detections[:, 5],
                                               detections[:, 6], nms_thre)
        output[i] = detections[keep]
    return output


def reference(path, files, imgsz, conf, iou, decoded, preproc=ref_preproc, demo_post=ref_demo_postprocess,
              post=ref_postprocess, agnostic=False):
    """YOLOX's ONNX demo flow on the exported file, with ``utils.postprocess`` as the NMS; boxes / r, clipped."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = []
    for f in files:
        img = cv2.imread(str(f))
        x, r = preproc(img, imgsz)
        out = session.run(None, {session.get_inputs()[0].name: x[None]})[0]
        if not decoded:
            out = demo_post(out, imgsz)
        det = post(torch.from_numpy(out), NC, conf, iou, class_agnostic=agnostic)[0]
        if det is None:
            results.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0)))
            continue
        boxes = det[:, :4].numpy() / r
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, img.shape[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, img.shape[0])
        results.append((boxes, (det[:, 4] * det[:, 5]).numpy(), det[:, 6].numpy()))
    return results


@pytest.fixture(scope="module")
def yolox_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("yolox")
    out = {}
    for decode in (False, True):
        torch.manual_seed(0)
        model = yolox_model(nc=NC, decode=decode)
        calibrate(model, IMGSZ, bgr_to_input(scale=1.0, rgb=False))
        out[decode] = export_onnx(model, IMGSZ, d / f"yolox_{'decoded' if decode else 'raw'}.onnx")
    return out


@pytest.mark.parametrize("decoded", [False, True], ids=["raw-grid", "decoded-in-graph"])
def test_parity(yolox_files, image_dir, decoded):
    path = yolox_files[decoded]
    files = sorted(image_dir.iterdir())
    with unideploy.load(path, conf=0.8, iou=0.45, max_det=100000) as pred:
        assert pred.adapter.name == "yolox"  # recognised: one box per cell of strides 8/16/32
        assert (pred.spec.channel_order, pred.spec.scale, pred.spec.resize) == ("bgr", 1.0, "letterbox_topleft")
        ours = pred(files)
        assert pred.adapter._decoded is decoded  # the layout was told apart from the values
    ref = reference(path, files, IMGSZ, 0.8, 0.45, decoded)
    total = 0
    for f, det, (b, s, c) in zip(files, ours, ref):
        assert_same_detections(det, b, s, c, where=f"{path.name}/{f.name}")
        total += len(det)
    print("boxes", total)
    assert total > 10 * len(files), "too few boxes for the comparison to exercise NMS"


def test_preprocessing_matches_preproc(yolox_files, image_dir):
    """The tensor fed to the model is YOLOX's: int() resized size, top-left, 114, BGR 0-255."""
    with unideploy.load(yolox_files[False]) as pred:
        for f in sorted(image_dir.iterdir()):
            img = cv2.imread(str(f))
            x, info = pred.preprocess(img)
            ref, r = ref_preproc(img, IMGSZ)
            np.testing.assert_array_equal(x, ref, err_msg=f.name)
            assert info.gain == (r, r) and info.pad == (0, 0)


def test_legacy_preprocessing(yolox_files, image_dir):
    """extra.legacy = True: ValTransform(legacy=True): RGB, /255, ImageNet mean/std."""
    f = sorted(image_dir.iterdir())[0]
    img = cv2.imread(str(f))
    with unideploy.load(yolox_files[False], family="yolox", spec={"extra": {"legacy": True}}) as pred:
        x, _ = pred.preprocess(img)
    ref, _ = ref_preproc(img, IMGSZ)
    ref = ref[::-1, :, :].copy()
    ref /= 255.0
    ref -= np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    ref /= np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    np.testing.assert_allclose(x, ref, atol=1e-5)


def test_layout_override_and_agnostic(yolox_files, image_dir):
    files = sorted(image_dir.iterdir())[:10]
    path = yolox_files[True]
    with unideploy.load(path, family="yolox", conf=0.8, iou=0.45, agnostic=True, max_det=100000,
                        spec={"extra": {"decoded": True}}) as pred:
        ours = pred(files)
    for f, det, (b, s, c) in zip(files, ours, reference(path, files, IMGSZ, 0.8, 0.45, True, agnostic=True)):
        assert_same_detections(det, b, s, c, where=f.name)


def test_openvino_backend(yolox_files, image_dir):
    """The adapter is the same whatever runs the graph: OpenVINO (f32) gives ONNX Runtime's detections."""
    pytest.importorskip("openvino")
    files = sorted(image_dir.iterdir())[:10]
    with unideploy.load(yolox_files[False], conf=0.8, iou=0.45) as ort_pred:
        ref = ort_pred(files)
    with unideploy.load(yolox_files[False], backend="openvino", precision="f32", conf=0.8, iou=0.45) as ov:
        assert ov.adapter.name == "yolox"
        for f, det, r in zip(files, ov(files), ref):
            assert_same_detections(det, r.xyxy, r.confidence, r.class_id, where=f.name)


def test_cli_predict_family(yolox_files, image_dir, tmp_path):
    from unideploy.cli.main import main

    out = tmp_path / "r.json"
    assert main(["predict", str(yolox_files[False]), str(image_dir), "--family", "yolox", "--conf", "0.5",
                 "--save-json", str(out), "--quiet"]) == 0
    import json

    assert len(json.loads(out.read_text())) > 0


# -- optional: the real YOLOX code (``yolox`` package) ---------------------------------------------------------

def test_against_yolox_package(image_dir, tmp_path):
    pytest.importorskip("yolox", reason="the yolox package is not installed (optional reference)")
    from yolox.data.data_augment import preproc
    from yolox.exp import get_exp
    from yolox.utils import demo_postprocess, postprocess

    global NC
    torch.manual_seed(0)
    exp = get_exp(None, "yolox-nano")
    model = exp.get_model().eval()
    calibrate(model, IMGSZ, bgr_to_input(scale=1.0, rgb=False))
    with torch.no_grad():
        for o, c in zip(model.head.obj_preds, model.head.cls_preds):
            o.bias += 4.0
            c.bias += 3.0
    model.head.decode_in_inference = False  # tools/export_onnx.py default
    path = export_onnx(model, IMGSZ, tmp_path / "yolox_nano.onnx")
    files = sorted(image_dir.iterdir())
    with unideploy.load(path, conf=0.3, iou=0.45, max_det=100000) as pred:
        assert pred.adapter.name == "yolox"
        ours = pred(files)
    saved, NC = NC, exp.num_classes
    try:
        ref = reference(path, files, IMGSZ, 0.3, 0.45, False, preproc=preproc, demo_post=demo_postprocess,
                        post=postprocess)
    finally:
        NC = saved
    total = 0
    for f, det, (b, s, c) in zip(files, ours, ref):
        assert_same_detections(det, b, s, c, where=f.name)
        total += len(det)
    assert total > 5 * len(files)
