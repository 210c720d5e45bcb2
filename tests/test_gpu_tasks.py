"""The GPU predictor's segmentation / pose / OBB path, run on CPU tensors (``allow_cpu``), against the torch backend's
CPU adapters on the same checkpoint: the same instances, masks assembled on the device equal to the numpy ones."""

from __future__ import annotations

import os

import numpy as np
import pytest

import unideploy
from unideploy.core.ops.masks import assemble_masks, mask_iou

torch = pytest.importorskip("torch")
IMGSZ = 96


@pytest.fixture(scope="module")
def task_checkpoints(tmp_path_factory):
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    from unideploy.testing import randomise, write_scenes

    out = tmp_path_factory.mktemp("gpu_tasks")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(out / "cfg"))
    paths = {}
    for task in ("seg", "pose", "obb"):
        torch.manual_seed(0)
        model = YOLO(f"yolov8n-{task}.yaml")
        randomise(model.model, IMGSZ)
        paths[task] = out / f"yolov8n-{task}.pt"
        model.save(str(paths[task]))
    paths["images"] = write_scenes(out / "images", [(96, 128), (128, 80), (50, 70), (200, 150)], seed=3)
    return paths


def _pair(path, **kw):
    from unideploy.runtime.gpu import GpuPredictor

    ref = unideploy.load(str(path), backend="torch", device="cpu", imgsz=IMGSZ, **kw)
    gpu = GpuPredictor(str(path), device="cpu", allow_cpu=True, batch=2, imgsz=IMGSZ, **kw)
    return ref, gpu


def _same_instances(a, b, where):
    assert type(a) is type(b), where
    assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} instances"
    # the device letterbox and a batch of 2 move the network's outputs by float rounding (measured: <= 0.004 px)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.05, rtol=1e-3, err_msg=where)  # random OBB boxes reach 700 px
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-3, err_msg=where)
    np.testing.assert_array_equal(a.class_id, b.class_id, err_msg=where)


@pytest.mark.slow
def test_segmentation_on_the_device_matches_the_cpu_adapter(task_checkpoints):
    ref, gpu = _pair(task_checkpoints["seg"], conf=0.25)
    with ref, gpu:
        files = [str(f) for f in task_checkpoints["images"]]
        want, got = ref(files), gpu(files)
        # retina_masks=False is honoured on the device too (Ultralytics' default path; the CPU adapter's masks)
        want_in, got_in = ref(files, retina_masks=False), gpu(files, retina_masks=False)
    changed = 0
    for f, a, b, c in zip(files, want_in, got_in, want):
        _same_instances(a, b, f)
        assert a.masks.data.shape == b.masks.data.shape
        differ = (a.masks.data != b.masks.data).sum() / max(1, a.masks.data.sum())
        assert differ < 1e-2, f"retina_masks=False, {f}: {differ:.2%} of mask pixels differ"
        changed += len(a) != len(c) or bool((a.masks.data != c.masks.data).any())
    assert changed, "retina_masks=False should change the masks"
    total = 0
    for f, a, b in zip(files, want, got):
        _same_instances(a, b, f)
        assert a.masks.data.shape == b.masks.data.shape
        if len(a):
            # masks differ only where a logit is within float rounding of 0: one pixel of a tiny mask is 3 % IoU
            iou = np.diag(mask_iou(a.masks.data, b.masks.data))
            assert iou.mean() > 0.995 and iou.min() > 0.9, f"{f}: mask IoU mean {iou.mean()}, min {iou.min()}"
            differ = (a.masks.data != b.masks.data).sum() / max(1, a.masks.data.sum())
            assert differ < 1e-2, f"{f}: {differ:.2%} of mask pixels differ"
        total += len(a)
    assert total > 10


def test_mask_assembly_tensor_equals_numpy():
    from unideploy.runtime.gpu.tasks import assemble_masks_tensor

    rng = np.random.default_rng(0)
    protos = rng.normal(size=(32, 24, 24)).astype(np.float32)
    coeffs = rng.normal(size=(7, 32)).astype(np.float32)
    boxes = np.array([[0, 0, 50, 40], [10.2, 5.7, 70.5, 88.1], [3, 3, 3, 9], [60, 70, 200, 300], [-5, -5, 1000, 1000],
                      [20.5, 30.5, 21.5, 31.5], [0, 0, 1, 1]], np.float32)
    for shape in [(96, 96), (100, 80), (37, 121)]:
        want = assemble_masks(protos, coeffs, boxes, shape, 4)
        got = assemble_masks_tensor(torch.from_numpy(protos), torch.from_numpy(coeffs), torch.from_numpy(boxes), shape, 4)
        assert got.dtype == torch.bool and tuple(got.shape) == want.shape
        assert (got.numpy() != want).sum() <= 2, shape  # only pixels whose logit is within rounding of 0


def test_mask_assembly_chunks_give_the_same_masks(monkeypatch):
    from unideploy.runtime.gpu import tasks

    rng = np.random.default_rng(1)
    protos = torch.from_numpy(rng.normal(size=(8, 16, 16)).astype(np.float32))
    coeffs = torch.from_numpy(rng.normal(size=(5, 8)).astype(np.float32))
    boxes = torch.tensor([[0, 0, 64, 64], [5, 5, 30, 40], [10, 0, 64, 20], [0, 30, 20, 64], [1, 1, 2, 2]], dtype=torch.float32)
    whole = tasks.assemble_masks_tensor(protos, coeffs, boxes, (64, 64))
    monkeypatch.setattr(tasks, "MASK_CHUNK_PIXELS", 64 * 64 * 2)  # two instances per chunk
    assert torch.equal(tasks.assemble_masks_tensor(protos, coeffs, boxes, (64, 64)), whole)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["pose", "obb"])
def test_pose_and_obb_match_the_cpu_adapter(task_checkpoints, task):
    ref, gpu = _pair(task_checkpoints[task], conf=0.25)
    with ref, gpu:
        files = [str(f) for f in task_checkpoints["images"]]
        want, got = ref(files), gpu(files)
    total = 0
    for f, a, b in zip(files, want, got):
        _same_instances(a, b, f)
        if task == "pose":
            np.testing.assert_allclose(a.keypoints.data, b.keypoints.data, atol=0.05, err_msg=f)
        else:
            np.testing.assert_allclose(a.obb.xywhr, b.obb.xywhr, atol=0.05, rtol=1e-3, err_msg=f)
        total += len(a)
    assert total > 10
