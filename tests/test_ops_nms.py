"""Greedy NMS: the chunked numpy implementation keeps exactly the boxes a one-box-at-a-time greedy loop and
torchvision.ops.nms keep (order included), on random, tied, empty and threshold-edge inputs."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from unideploy.core.ops.nms import nms

nms_mod = importlib.import_module("unideploy.core.ops.nms")  # the module (unideploy.core.ops re-exports the function)


def greedy(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """The textbook loop, float32 like torchvision: keep the best, drop what overlaps it by more than thr."""
    order = list(np.argsort(-scores, kind="stable"))
    b = boxes.astype(np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        rest = []
        for j in order:
            w = max(np.float32(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(np.float32(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = np.float32(w * h)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / (area[i] + area[j] - inter)
            if not iou > thr:
                rest.append(j)
        order = rest
    return keep


def random_case(rng: np.random.Generator, n: int, ties: bool, empty: bool):
    xy = rng.uniform(0, 60, (n, 2)).astype(np.float32)
    wh = rng.uniform(0, 25, (n, 2)).astype(np.float32)
    if empty:
        wh[rng.random(n) < 0.25] = 0
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = (rng.integers(0, 6, n) / 6 if ties else rng.random(n)).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("chunk", [1, 3, 128])
def test_chunked_nms_equals_the_greedy_loop(monkeypatch, chunk):
    monkeypatch.setattr(nms_mod, "_CHUNK", chunk)  # chunk boundaries anywhere, including one box per chunk
    rng = np.random.default_rng(chunk)
    for trial in range(120):
        n = int(rng.integers(0, 300 if chunk > 1 else 60))
        boxes, scores = random_case(rng, n, ties=trial % 3 == 0, empty=trial % 4 == 0)
        thr = float(rng.choice([0.0, 0.25, 0.5, 0.7, 1.0]))
        ref = greedy(boxes, scores, thr)
        got = nms(boxes, scores, thr)
        assert got.dtype == np.int64 and got.tolist() == ref, (trial, n, thr)
        k = int(rng.integers(1, 20))
        assert nms(boxes, scores, thr, max_keep=k).tolist() == ref[:k]


def test_iou_exactly_at_the_threshold_is_kept():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 5, 10, 10]], np.float32)  # IoU 0.5 with the first
    assert nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist() == [0, 1, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.49).tolist() == [0]


def test_matches_torchvision():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(7)
    for trial in range(60):
        boxes, scores = random_case(rng, int(rng.integers(1, 800)), ties=False, empty=trial % 4 == 0)
        # class-aware by offsets, as the YOLO adapters call it
        boxes = boxes + (rng.integers(0, 5, len(boxes)) * 1000).astype(np.float32)[:, None]
        thr = float(rng.choice([0.45, 0.6, 0.7]))
        ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        assert nms(boxes, scores, thr).tolist() == ref.tolist()


@pytest.mark.parametrize("split", [1000, 10])
def test_batched_nms_equals_torchvision(split):
    """Class-aware NMS (the one YOLOX and NanoDet use) keeps what ``torchvision.ops.batched_nms`` keeps, in order,
    on both of its branches (one offset NMS up to ``split`` boxes, class by class above)."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    from unideploy.core.ops.nms import batched_nms

    rng = np.random.default_rng(split)
    for trial in range(60):
        n = int(rng.integers(0, 120))
        boxes, scores = random_case(rng, n, ties=False, empty=False)
        cls = rng.integers(0, 4, n)
        thr = float(rng.choice([0.3, 0.5, 0.7]))
        ref = tv.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(cls), thr)
        got = batched_nms(boxes, scores, cls, thr, split=split)
        assert got.tolist() == ref.tolist(), (trial, n, thr)
        assert batched_nms(boxes, scores, cls, thr, split=split, max_keep=3).tolist() == ref[:3].tolist()
        assert batched_nms(boxes, scores, cls, thr, agnostic=True).tolist() == nms(boxes, scores, thr).tolist()


def test_families_share_the_one_nms():
    from unideploy.core.ops.nms import batched_nms
    from unideploy.runtime.families import nanodet, yolox

    assert yolox.class_nms is batched_nms
    assert nanodet.batched_nms is batched_nms
