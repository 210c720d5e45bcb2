"""Task result types, mask / rotated-box ops against their references, and the task records the sinks write."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from unideploy.core.ops.masks import assemble_masks, decode_rle, encode_rle, mask_iou
from unideploy.core.ops.rotated import polygon_iou, probiou, rotated_nms, xywhr_to_corners
from unideploy.core.results import (Detections, Keypoints, Masks, OrientedBoxes, OrientedDetections, Poses,
                                    Segmentations)
from unideploy.core.sinks import CocoJsonSink, JsonLinesSink, coco_records, draw_result, yolo_txt


def _seg(n: int = 3, shape=(20, 30)) -> Segmentations:
    rng = np.random.default_rng(0)
    m = np.zeros((n, *shape), bool)
    for i in range(n):
        m[i, 2 + i: 10 + i, 3: 12 + 2 * i] = True
    boxes = np.array([[3, 2 + i, 12 + 2 * i, 10 + i] for i in range(n)], np.float32)
    return Segmentations(boxes, rng.random(n), np.arange(n), {0: "a"}, shape, masks=Masks(m))


def test_result_types_validate_index_and_empty():
    s = _seg()
    assert isinstance(s, Detections) and len(s[1:]) == 2 and s[0].masks.data.shape == (1, 20, 30)
    assert s[np.array([True, False, True])].masks.data[1].sum() == s.masks.data[2].sum()
    assert len(Segmentations.empty(image_shape=(5, 6)).masks) == 0
    assert Segmentations.empty(image_shape=(5, 6)).masks.shape == (5, 6)
    with pytest.raises(ValueError, match=r"masks must have 3 entries"):
        Segmentations(s.xyxy, s.confidence, s.class_id, masks=Masks(np.zeros((2, 4, 4), bool)))
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\), got \(4, 4\)"):
        Masks(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"keypoints must have shape \(N, K, 3\).*got \(2, 17\)"):
        Keypoints(np.zeros((2, 17)))
    with pytest.raises(ValueError, match=r"oriented boxes must have shape \(N, 5\).*got \(2, 4\)"):
        OrientedBoxes(np.zeros((2, 4)))
    p = Poses(np.zeros((2, 4)), [0.5, 0.6], [0, 0], keypoints=np.ones((2, 5, 2)))
    assert p[1].keypoints.conf.tolist() == [[1.0] * 5] and len(Poses.empty()) == 0
    o = OrientedDetections.from_xywhr(np.array([[10, 10, 4, 2, np.pi / 2]]), [0.9], [0], image_shape=(20, 20))
    assert np.allclose(o.xyxy, [[9, 8, 11, 12]], atol=1e-5) and len(o[[0]]) == 1 and len(OrientedDetections.empty()) == 0
    rles = s.masks.rle()
    assert s[1:].masks.rle() == rles[1:]  # the cached RLE follows indexing
    assert json.dumps(s.to_dicts()) and json.dumps(p.to_dicts()) and json.dumps(o.to_dicts())


def test_rle_matches_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        m = rng.random((h, w)) < rng.random()
        ref = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        assert encode_rle(m)["counts"] == ref["counts"].decode()
        assert (decode_rle(encode_rle(m)) == m).all()


@pytest.mark.parametrize("shape", [(96, 160), (200, 120), (128, 128), (21, 37), (517, 300)])
def test_assemble_masks_matches_process_mask_native(shape):
    torch = pytest.importorskip("torch")
    from ultralytics.utils import ops

    rng = np.random.default_rng(2)
    protos = rng.normal(size=(32, 32, 32)).astype(np.float32)
    coeffs = rng.normal(size=(12, 32)).astype(np.float32)
    h, w = shape
    xy = rng.uniform(0, 1, (12, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + rng.uniform(0.05, 1, (12, 2)) * [w, h] * 0.6], 1).astype(np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    ref = ops.process_mask_native(torch.from_numpy(protos), torch.from_numpy(coeffs), torch.from_numpy(boxes),
                                  shape).numpy() > 0
    ours = assemble_masks(protos, coeffs, boxes, shape)
    iou = np.diag(mask_iou(ours, ref))
    nonempty = ref.reshape(12, -1).any(1)
    assert iou[nonempty].min() >= 0.99, iou
    assert (ours != ref).mean() < 1e-3


def test_probiou_and_rotated_nms_match_ultralytics():
    torch = pytest.importorskip("torch")
    from ultralytics.utils.metrics import batch_probiou
    from ultralytics.utils.nms import TorchNMS

    rng = np.random.default_rng(3)
    b = np.concatenate([rng.uniform(0, 60, (300, 2)), rng.uniform(2, 30, (300, 2)),
                        rng.uniform(-np.pi / 4, 3 * np.pi / 4, (300, 1))], 1).astype(np.float32)
    scores = rng.random(300).astype(np.float32)
    ref = batch_probiou(torch.from_numpy(b), torch.from_numpy(b)).numpy()
    assert np.abs(probiou(b, b) - ref).max() < 1e-4
    for thr in (0.3, 0.7):
        keep_ref = TorchNMS.fast_nms(torch.from_numpy(b), torch.from_numpy(scores), thr, iou_func=batch_probiou)
        assert rotated_nms(b, scores, thr, chunk=64).tolist() == keep_ref.tolist()
    sq = xywhr_to_corners(np.array([[5, 5, 2, 2, 0], [6, 5, 2, 2, 0]], np.float32))
    assert polygon_iou(sq[:1], sq[1:])[0, 0] == pytest.approx(1 / 3, abs=1e-5)


def test_task_records_and_lines():
    mask_api = pytest.importorskip("pycocotools.mask")
    s = _seg()
    recs = coco_records(s, 7, "a.jpg")
    assert recs[0]["image_id"] == 7 and recs[0]["category_id"] == 1
    assert (mask_api.decode(recs[1]["segmentation"]).astype(bool) == s.masks.data[1]).all()
    lines = yolo_txt(s).splitlines()
    assert len(lines) == 3 and all(len(ln.split()) % 2 == 0 for ln in lines)  # class + x,y pairs + score
    kp = np.array([[[4, 6, 0.9], [10, 2, 0.2]]], np.float32)
    p = Poses(np.array([[2, 1, 12, 9]]), [0.8], [0], image_shape=(10, 20), keypoints=kp)
    assert coco_records(p, 1, "b")[0]["keypoints"] == [4.0, 6.0, 0.9, 10.0, 2.0, 0.2]
    assert yolo_txt(p).split()[:8] == ["0", "0.350000", "0.500000", "0.500000", "0.800000", "0.200000", "0.600000",
                                       "0.900000"]
    o = OrientedDetections.from_xywhr(np.array([[10, 5, 4, 2, 0]]), [0.9], [2], image_shape=(10, 20))
    r = coco_records(o, 1, "c")[0]
    assert r["rbox"] == [10.0, 5.0, 4.0, 2.0, 0.0] and r["poly"][:2] == [12.0, 6.0] and r["bbox"] == [8.0, 4.0, 4.0, 2.0]
    assert yolo_txt(o).split()[:3] == ["2", "0.600000", "0.600000"]
    img = np.zeros((20, 30, 3), np.uint8)
    for res in (s, p, o):
        drawn = draw_result(img if res is s else img[:10, :20], res)
        assert drawn.any()


def test_sinks_write_task_records(tmp_path):
    s = _seg()
    outcome = SimpleNamespace(error=None, result=s, item=SimpleNamespace(index=0, name="x.jpg", frame=None))
    with CocoJsonSink(tmp_path / "p.json") as sink:
        sink.add(outcome)
    assert "segmentation" in json.loads((tmp_path / "p.json").read_text())[2]
    with JsonLinesSink(tmp_path / "p.jsonl") as sink:
        sink.add(outcome)
    assert "mask" in json.loads((tmp_path / "p.jsonl").read_text())["detections"][0]
