"""``fast_decode``: large JPEGs decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling), boxes in full-image pixels.

The exact path (full decode + letterbox) is the reference: on the demo model, every box of the fast path must land
within a model-input pixel or two of the exact path's box on the same object, in the original image's coordinates.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from unideploy.core.errors import OptionError
from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.ops.letterbox_scaled import ScaledImage, dct_factor, full_shape_of, full_size_info
from unideploy.core.sources import Source, decode_image, read_image
from unideploy.core.spec import ModelSpec
from unideploy.runtime.families import get_adapter

DEMO = Path(unideploy.__file__).parent / "assets" / "demo"
MODEL = DEMO / "shapes_yolov8.onnx"
SCALES = (5, 2.5, 2, 5)  # the first four demo images (439-636 px long) -> 3180, 1582, 878, 2290 px: 1/8, 1/4, 1/2, 1/4


@pytest.fixture(scope="session")
def large_jpegs(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """Four demo validation images enlarged 2-5x (JPEG q95) and their ground-truth boxes in the enlarged pixels."""
    out = tmp_path_factory.mktemp("large_jpegs")
    boxes = []
    for img_path, scale in zip(sorted((DEMO / "val" / "images").glob("*.jpg")), SCALES):
        img = cv2.imread(str(img_path))
        big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(out / img_path.name), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
        h, w = big.shape[:2]
        rows = np.loadtxt(DEMO / "val" / "labels" / f"{img_path.stem}.txt", ndmin=2)
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1))
    return out, boxes


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], 1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def test_dct_factor_is_the_smallest_scale_still_at_least_the_resized_size():
    assert dct_factor(3000, 4000, (480, 640)) == 4  # 750x1000 >= 480x640; 1/8 (375x500) is too small
    assert dct_factor(3000, 4000, (375, 500)) == 8
    assert dct_factor(3000, 4000, (376, 500)) == 4
    assert dct_factor(1001, 1283, (501, 642)) == 2  # ceil(1001 / 2), ceil(1283 / 2): libjpeg rounds up
    assert dct_factor(600, 800, (480, 640)) == 1
    yolo = get_adapter("yolo")(ModelSpec(imgsz=(640, 640)))
    assert [yolo.decode_factor(h, w) for h, w in ((3000, 4000), (1280, 1280), (1279, 1279), (1278, 1278), (640, 480))] == [4, 2, 2, 1, 1]
    stretch = get_adapter("yolo")(ModelSpec(imgsz=(320, 320), resize="stretch"))
    assert stretch.decode_factor(3000, 1000) == 2  # the narrow side must stay >= 320 (500 >= 320; 250 is not)
    crop = get_adapter("classify")(ModelSpec(imgsz=(224, 224), names={0: "a"}))  # ImageNet crop: short side 256
    assert crop.decode_factor(2048, 4096) == 8 and crop.decode_factor(2040, 4096) == 4


def test_reduced_decode_remembers_the_full_size_and_maps_boxes_to_it():
    img = np.random.default_rng(0).integers(0, 255, (1001, 1283, 3), np.uint8)
    enc = cv2.imencode(".jpg", img)[1]
    dec = decode_image(enc, decode_scale=lambda h, w: 4)
    assert isinstance(dec, ScaledImage) and dec.shape == (251, 321, 3)
    assert dec.full_shape == (1001, 1283) and dec.factor == 4 and dec[..., :3].full_shape == (1001, 1283)
    assert type(decode_image(enc)) is np.ndarray and decode_image(enc).shape == (1001, 1283, 3)
    assert type(decode_image(enc, decode_scale=lambda h, w: 1)) is np.ndarray
    png = cv2.imencode(".png", img)[1]  # DCT scaling is a JPEG feature: other formats decode at full size
    assert type(decode_image(png, decode_scale=lambda h, w: 4)) is np.ndarray
    # a reduced pixel is k full pixels: model-input (x - pad) / gain on the reduced image, divided by k
    info = full_size_info(dec, LetterboxInfo((251, 321), (320, 250), (0, 35), (320 / 321, 250 / 251)))
    assert info.orig_shape == (1001, 1283) and info.pad == (0, 35)
    assert info.gain == pytest.approx((320 / 321 / 4, 250 / 251 / 4))
    assert full_size_info(img, info) is info  # a plain array: unchanged
    assert full_shape_of((251, 321, 3), 1001, 1283, 4) == (1001, 1283)
    assert full_shape_of((321, 251, 3), 1001, 1283, 4) == (1283, 1001)  # EXIF turned it a quarter
    assert full_shape_of((300, 300, 3), 1001, 1283, 4) is None


def test_exif_orientation_is_applied_and_the_full_shape_follows_it():
    from PIL import Image

    img = np.random.default_rng(1).integers(0, 255, (1200, 1600, 3), np.uint8)
    pil = Image.fromarray(img[..., ::-1])
    exif = pil.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotate 90 clockwise)
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    full = decode_image(buf.getvalue())
    dec = decode_image(buf.getvalue(), decode_scale=lambda h, w: 2)
    assert full.shape == (1600, 1200, 3) and dec.shape == (800, 600, 3) and dec.full_shape == (1600, 1200)
    small = cv2.resize(full, (600, 800), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(small - dec).mean() < 40  # the same orientation (random pixels: only the means agree)


def test_fast_decode_boxes_land_where_the_exact_path_puts_them(large_jpegs):
    folder, truth = large_jpegs
    files = sorted(folder.glob("*.jpg"))
    with unideploy.load(MODEL) as exact, unideploy.load(MODEL, fast_decode=True) as fast:
        factors = [fast.adapter.decode_factor(*read_image(f).shape[:2]) for f in files]
        assert factors == [8, 4, 2, 4], factors  # every reduced scale is exercised
        outs = list(fast.stream(files))
        matched = 0
        for f, gt, out in zip(files, truth, outs):
            a, b = exact(f), out.result
            assert b.image_shape == a.image_shape == read_image(f).shape[:2]
            model_px = max(a.image_shape) / 320  # one model-input pixel, in full-image pixels
            confident_a, confident_b = a.xyxy[a.confidence > 0.5], b.xyxy[b.confidence > 0.5]
            assert abs(len(confident_a) - len(confident_b)) <= 1, (f.name, len(confident_a), len(confident_b))
            for box in gt:  # each labelled object the exact path finds: the fast box on it is within 2 model px
                ious = _iou(box[None], confident_a)[0]
                if not len(ious) or ious.max() < 0.6:
                    continue
                ia, ib = int(np.argmax(ious)), int(np.argmax(_iou(box[None], confident_b)[0]))
                assert np.abs(confident_a[ia] - confident_b[ib]).max() < 2 * model_px, (f.name, confident_a[ia], confident_b[ib])
                matched += 1
            assert fast(f).xyxy == pytest.approx(b.xyxy)  # __call__ with a path decodes the same way
        assert matched >= 0.7 * sum(len(t) for t in truth), matched


def test_small_images_and_the_default_path_are_unchanged():
    files = sorted((DEMO / "val" / "images").glob("*.jpg"))[:3]  # <= 640 px: no reduced scale fits a 320 model
    with unideploy.load(MODEL) as exact, unideploy.load(MODEL, fast_decode=True) as fast:
        for f, out in zip(files, fast.stream(files)):
            a = exact(f)
            np.testing.assert_array_equal(a.xyxy, out.result.xyxy)
            np.testing.assert_array_equal(a.confidence, out.result.confidence)
        assert exact.fast_decode is False


def test_fast_decode_refuses_to_keep_images_and_leaves_the_callers_source_alone(large_jpegs):
    folder, _ = large_jpegs
    src = Source(folder)
    with unideploy.load(MODEL, fast_decode=True) as fast:
        with pytest.raises(OptionError, match=r"^fast_decode decodes large JPEGs at a reduced size"):
            fast.stream(src, keep_images=True)
        assert len(list(fast.stream(src))) == 4
    assert src.decode_scale is None


def test_predict_and_the_cli_take_fast_decode(large_jpegs, tmp_path):
    from unideploy.cli.main import main

    folder, _ = large_jpegs
    s = unideploy.predict(MODEL, folder, fast_decode=True, save_json=tmp_path / "lib.json")
    assert s.images == 4
    assert main(["predict", str(MODEL), str(folder), "--fast-decode", "--save-json", str(tmp_path / "cli.json"),
                 "-q"]) == 0
    lib, cli = json.loads((tmp_path / "lib.json").read_text()), json.loads((tmp_path / "cli.json").read_text())
    assert lib == cli and lib
    exact = unideploy.predict(MODEL, folder, save_json=tmp_path / "exact.json")
    assert exact.images == 4 and json.loads((tmp_path / "exact.json").read_text()) != lib  # pixels differ
    with pytest.raises(OptionError, match="fast_decode"):
        unideploy.predict(MODEL, folder, fast_decode=True, save_img=tmp_path / "img")


def test_bench_takes_fast_decode_and_says_where_preprocessing_runs(large_jpegs):
    from unideploy.tools.bench import benchmark, render

    folder, _ = large_jpegs
    report = benchmark(MODEL, loop=2, warmup=1, data=folder, measure_startup=False, measure_map=False, fast_decode=True)
    assert report["settings"]["fast_decode"] is True and report["runs"][0]["preprocess_in"] == "host"
    assert report["runs"][0]["batches"][0]["e2e"]["images_per_s"] > 0
    text = render(report)
    assert "--fast-decode" in text and "preprocessing in" in text


def test_compare_reports_fast_decode_differences(large_jpegs):
    """``compare`` with ``fast_decode`` on one side: the tensor level feeds both the same input (identical), the task
    level each side's own decode — the box differences the fast path makes, on every image."""
    folder, _ = large_jpegs
    r = unideploy.compare(MODEL, MODEL, folder, cand_options={"fast_decode": True})
    same = unideploy.compare(MODEL, MODEL, folder)
    assert any("fast_decode" in n for n in r.notes) and not any("fast_decode" in n for n in same.notes)
    assert r.tensors[0].max_abs == 0  # same input to both at the tensor level
    d, e = r.detection, same.detection
    assert d.matched >= 0.9 * d.ref_boxes and e.matched == e.ref_boxes
    assert e.shift_px_max == 0 and d.shift_px_max > 0  # the fast decode moved boxes; the exact path did not
    flipped = unideploy.compare(MODEL, MODEL, folder, ref_options={"fast_decode": True})
    assert flipped.detection.matched == d.matched and flipped.detection.shift_px_max == pytest.approx(d.shift_px_max)


@pytest.mark.parametrize("task, check", [
    ("seg", lambda t: t.mask_iou_mean >= 0.9 and t.mask_iou_p5 >= 0.8),  # measured 0.958 / 0.883
    ("pose", lambda t: t.oks_mean >= 0.95),  # measured 0.989 (keypoints mean 16 px in ~2,900 px images)
    ("obb", lambda t: t.rotated_iou_mean >= 0.85 and t.angle_deg_max <= 5),  # measured 0.929, 1.8 deg
])
def test_fast_decode_maps_masks_keypoints_and_rotated_boxes_back(task, check, tmp_path):
    """The task demo models on five of their validation images enlarged 5x (2,200-3,000 px, decoded at 1/8 for the
    160 px models): the fast path's masks, keypoints and rotated boxes land on the exact path's in full-image pixels
    (a wrong mapping puts them elsewhere: IoU / OKS near 0). The limits leave room for the small demo models'
    sensitivity to the pixels the reduced decode changes."""
    for f in sorted((DEMO / f"val_{task}" / "images").glob("*"))[:5]:
        big = cv2.resize(cv2.imread(str(f)), None, fx=5, fy=5, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(tmp_path / f"{f.stem}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
    model = DEMO / f"shapes_yolov8_{task}.onnx"
    r = unideploy.compare(model, model, tmp_path, cand_options={"fast_decode": True})
    assert r.detection.matched >= 0.9 * r.detection.ref_boxes > 0
    assert r.instances is not None and r.instances.pairs >= 0.9 * r.detection.ref_boxes
    assert check(r.instances), r.instances
