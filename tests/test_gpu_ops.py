"""The device-agnostic parts of the GPU pipeline, on CPU tensors: OpenCV-exact resize and letterbox,
normalisation equal to the adapter's, and batched postprocessing equal to the numpy YOLO adapter."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import SIZES, scene
from parity import assert_same_detections
from unideploy.core.ops.letterbox import letterbox

torch = pytest.importorskip("torch")

TARGETS = [(320, 320), (640, 640), (256, 320), (384, 640)]


@pytest.mark.parametrize("new_shape", TARGETS)
@pytest.mark.parametrize("center", [True, False])
def test_geometry_matches_ops_letterbox(new_shape, center):
    from unideploy.runtime.gpu.letterbox import letterbox_geometry

    for h0, w0 in SIZES + [(1, 1), (7, 5), (3, 900), (641, 639)]:
        _, ref = letterbox(np.zeros((h0, w0, 3), np.uint8), new_shape, center=center)
        info, _ = letterbox_geometry(h0, w0, new_shape, center=center)
        assert info == ref, f"{(h0, w0)} -> {new_shape}"


def test_resize_is_bit_exact_with_opencv():
    from unideploy.runtime.gpu.letterbox import resize_linear

    rng = np.random.default_rng(0)
    cases = 0
    for h0, w0 in SIZES + [(7, 5), (3, 900), (2, 2), (1000, 2)]:
        for h, w in [(320, 320), (max(h0 // 2, 1), max(w0 // 2, 1)), (h0 * 2, w0 * 2), (max(round(h0 * 0.37), 1), max(round(w0 * 0.37), 1))]:
            if (h, w) == (h0, w0):
                continue
            img = rng.integers(0, 256, (h0, w0, 3), dtype=np.uint8)
            ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
            ours = resize_linear(torch.from_numpy(img).permute(2, 0, 1).contiguous(), (h, w)).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(ours, ref, err_msg=f"{(h0, w0)} -> {(h, w)}")
            cases += 1
    assert cases > 70


@pytest.mark.parametrize("new_shape", [(320, 320), (256, 320)])
def test_letterbox_tensor_matches_ops_letterbox(new_shape):
    from unideploy.runtime.gpu.letterbox import letterbox_batch

    rng = np.random.default_rng(3)
    imgs = [scene(rng, h, w) for h, w in SIZES]
    tensors = [torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))) for im in imgs]  # RGB
    batch, infos = letterbox_batch(tensors, new_shape, pad_value=114)
    for im, got, info in zip(imgs, batch, infos):
        ref, ref_info = letterbox(im, new_shape, pad_value=114)
        assert info == ref_info
        np.testing.assert_array_equal(got.numpy().transpose(1, 2, 0)[..., ::-1], ref)


def test_normalize_matches_adapter():
    from unideploy.runtime.gpu.letterbox import normalize_batch
    from unideploy.runtime.families.base import Adapter
    from unideploy.core.spec import ModelSpec

    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # BGR, already letterboxed
    for spec in (ModelSpec(imgsz=(64, 64)), ModelSpec(imgsz=(64, 64), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
                 ModelSpec(imgsz=(64, 64), channel_order="bgr")):
        ref = Adapter(spec).to_tensor(img)
        rgb = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))[None]
        got = normalize_batch(rgb, dtype=torch.float32, scale=spec.scale, mean=spec.mean, std=spec.std,
                              reverse_channels=spec.channel_order == "bgr")[0].numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def raw_outputs(tmp_path_factory):
    """Raw YOLO head outputs (with varied scores) for a batch of letterboxed scenes, plus their letterbox infos."""
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    from conftest import randomise

    torch.manual_seed(0)
    net = DetectionModel("yolov8n.yaml", verbose=False)
    randomise(net, 320)
    rng = np.random.default_rng(5)
    imgs = [scene(rng, h, w) for h, w in SIZES[:10]]
    lbs = [letterbox(im, (320, 320)) for im in imgs]
    x = np.stack([lb[0][..., ::-1].transpose(2, 0, 1) for lb in lbs]).astype(np.float32) / 255
    with torch.no_grad():
        pred = net(torch.from_numpy(x))[0]
    return pred, [lb[1] for lb in lbs]


@pytest.mark.parametrize("options", [dict(conf=0.25, iou=0.7), dict(conf=0.05, iou=0.5, max_det=20),
                                     dict(conf=0.25, iou=0.7, agnostic=True), dict(conf=0.1, iou=0.6, classes=[0, 3, 7])])
def test_batched_postprocess_matches_adapter(raw_outputs, options):
    from unideploy.core.options import PostprocessOptions
    from unideploy.core.spec import ModelSpec
    from unideploy.runtime.families.yolo import YoloAdapter
    from unideploy.runtime.gpu.postprocess import postprocess_batch

    pred, infos = raw_outputs
    names = {i: str(i) for i in range(80)}
    spec = ModelSpec(imgsz=(320, 320), names=names, family="yolo")
    opts = PostprocessOptions(**options)
    ref = YoloAdapter(spec).postprocess([pred.numpy()], infos, opts)
    ours = postprocess_batch(pred, infos, opts, names=names)
    assert len(ours) == len(ref)
    total = 0
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert_same_detections(o, r.xyxy, r.confidence, r.class_id, px=1e-3, score_tol=1e-6, where=f"image{i}")
        assert o.image_shape == r.image_shape
        if options.get("max_det"):
            assert len(o) <= options["max_det"]
        total += len(o)
    assert total > 20


def test_postprocess_empty_and_padded_batch(raw_outputs):
    from unideploy.core.options import PostprocessOptions
    from unideploy.runtime.gpu.postprocess import postprocess_batch

    pred, infos = raw_outputs
    none = postprocess_batch(pred, infos, PostprocessOptions(conf=1.0))  # strict "> conf": nothing passes
    assert [len(d) for d in none] == [0] * len(infos)
    partial = postprocess_batch(pred, infos[:3], PostprocessOptions(conf=0.25))  # a padded batch: only the first 3 rows are images
    assert len(partial) == 3


def test_postprocess_without_torchvision_matches_adapter(raw_outputs, monkeypatch):
    """Without torchvision, the batched postprocess falls back to the package's numpy NMS, image by image: the
    same detections as the CPU adapter (several images, so a cross-image mix-up would show)."""
    import sys

    from unideploy.core.options import PostprocessOptions
    from unideploy.core.spec import ModelSpec
    from unideploy.runtime.families.yolo import YoloAdapter
    from unideploy.runtime.gpu.postprocess import postprocess_batch

    pred, infos = raw_outputs
    names = {i: str(i) for i in range(80)}
    opts = PostprocessOptions(conf=0.05, iou=0.5)
    with_tv = postprocess_batch(pred, infos, opts, names=names)
    monkeypatch.setitem(sys.modules, "torchvision.ops", None)  # "from torchvision.ops import nms" -> ImportError
    ours = postprocess_batch(pred, infos, opts, names=names)
    ref = YoloAdapter(ModelSpec(imgsz=(320, 320), names=names, family="yolo")).postprocess([pred.numpy()], infos, opts)
    assert len(infos) > 1 and sum(len(r) for r in ref) > 20
    for i, (o, r, t) in enumerate(zip(ours, ref, with_tv)):
        np.testing.assert_array_equal(o.class_id, r.class_id, err_msg=f"image{i}")
        np.testing.assert_array_equal(o.confidence, r.confidence)
        assert_same_detections(o, r.xyxy, r.confidence, r.class_id, px=1e-3, score_tol=0, where=f"image{i}")
        assert_same_detections(o, t.xyxy, t.confidence, t.class_id, px=0, score_tol=0, where=f"image{i}")


def test_postprocess_options_are_typed(raw_outputs):
    from unideploy.runtime.gpu.postprocess import postprocess_batch

    pred, infos = raw_outputs
    with pytest.raises(TypeError):
        postprocess_batch(pred, infos, conff=0.3)  # type: ignore[call-arg]  # a misspelt option is an error
