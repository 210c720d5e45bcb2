"""Segmentation, pose and oriented boxes: parity with Ultralytics ``predict`` on the same exported files.

Random-weight ``-seg`` / ``-pose`` / ``-obb`` models (made to fire by :func:`unideploy.testing.randomise`) are
exported by Ultralytics at a small input size; every image is predicted by both, and every instance must be
matched one to one: same class, box corners within 1 px, score within 1e-3, then mask IoU (mean >= 0.97, 95 % of
instances >= 0.9), keypoints within 1.5 px, rotated-box corners within 1.5 px.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from conftest import has_module
from unideploy.core.ops.masks import mask_iou
from unideploy.testing import build_random_yolo, scene

pytest.importorskip("ultralytics")
pytestmark = pytest.mark.slow

IMGSZ = 128
TASKS = {"seg": "segment", "pose": "pose", "obb": "obb"}
#: (height, width): landscape, portrait, square, tiny, large, odd sizes
SIZES = [(96, 160), (200, 120), (128, 128), (21, 37), (517, 300), (333, 701)]


@pytest.fixture(scope="session")
def task_models(tmp_path_factory) -> dict[str, dict[str, Path]]:
    d = tmp_path_factory.mktemp("task_models")
    ov = has_module("openvino")
    return {t: build_random_yolo(f"yolov8n-{t}.yaml", d, IMGSZ, openvino=ov) for t in TASKS}


@pytest.fixture(scope="session")
def task_images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("task_images")
    rng = np.random.default_rng(3)
    out = []
    for i, (h, w) in enumerate(SIZES):
        img = scene(rng, h, w)
        if i == 2:  # a gray image (one channel on disk)
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        p = d / f"im{i}_{w}x{h}.png"
        cv2.imwrite(str(p), img)
        out.append(p)
    return out


def match(ours, ref_xyxy, ref_conf, ref_cls, where: str) -> list[tuple[int, int]]:
    """One-to-one pairs (ours, ref): same class, corners within 1 px, score within 1e-3."""
    assert len(ours) == len(ref_xyxy), f"{where}: {len(ours)} instances vs reference {len(ref_xyxy)}"
    used = np.zeros(len(ref_xyxy), bool)
    pairs = []
    for i in np.argsort(-ours.confidence, kind="stable"):
        diff = np.abs(ours.xyxy[i][None] - ref_xyxy).max(1)
        ok = np.flatnonzero(~used & (diff <= 1.0) & (ref_cls == ours.class_id[i])
                            & (np.abs(ref_conf - ours.confidence[i]) <= 1e-3))
        assert ok.size, f"{where}: instance {i} box {ours.xyxy[i]} score {ours.confidence[i]:.5f} has no match"
        j = int(ok[np.argmin(diff[ok])])
        used[j] = True
        pairs.append((int(i), j))
    return pairs


def _corner_dist(a: np.ndarray, b: np.ndarray) -> float:
    """Largest corner distance of two quadrilaterals, the best cyclic order of ``b``."""
    return min(float(np.linalg.norm(a - np.roll(b, k, 0), axis=1).max()) for k in range(4))


def _reference(task: str, path: Path):
    from ultralytics import YOLO

    return YOLO(str(path if path.suffix == ".onnx" else path.parent), task=TASKS[task])


CASES = [(t, f) for f in ("onnx", "openvino") for t in TASKS]


@pytest.mark.parametrize("task,fmt", CASES, ids=[f"{t}-{f}" for t, f in CASES])
def test_task_matches_ultralytics(task_models, task_images, task, fmt):
    if fmt == "openvino" and not has_module("openvino"):
        pytest.skip("openvino not installed")
    path = task_models[task][fmt]
    ref_model = _reference(task, path)
    ious: list[float] = []
    kpt_err = obb_err = 0.0
    total = 0
    # OpenVINO at its default precision, as Ultralytics compiles it (bf16 where the CPU has it): same numbers
    with unideploy.load(path, conf=0.25, iou=0.7) as pred:
        assert pred.task == TASKS[task]
        ours_all = pred([str(p) for p in task_images])
    for f, ours in zip(task_images, ours_all):
        r = ref_model.predict(str(f), imgsz=IMGSZ, conf=0.25, iou=0.7, retina_masks=True, verbose=False)[0]
        where = f"{task}/{fmt}/{f.name}"
        assert ours.image_shape == r.orig_shape
        if task == "obb":
            o = r.obb
            pairs = match(ours, o.xyxy.numpy(), o.conf.numpy(), o.cls.numpy().astype(np.int64), where)
            corners = o.xyxyxyxy.numpy()
            for i, j in pairs:
                obb_err = max(obb_err, _corner_dist(ours.obb.corners[i], corners[j]))
        else:
            b = r.boxes
            pairs = match(ours, b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(np.int64), where)
            if task == "seg" and pairs:
                assert ours.masks.shape == r.orig_shape
                ref_masks = r.masks.data.numpy() > 0.5
                ious += [float(mask_iou(ours.masks.data[i:i + 1], ref_masks[j:j + 1])[0, 0]) for i, j in pairs]
            if task == "pose" and pairs:
                ref_k = r.keypoints.data.numpy()
                for i, j in pairs:
                    kpt_err = max(kpt_err, float(np.abs(ours.keypoints.xy[i] - ref_k[j, :, :2]).max()))
                    assert np.abs(ours.keypoints.conf[i] - ref_k[j, :, 2]).max() <= 1e-3, where
        total += len(pairs)
    assert total >= 3 * len(task_images), f"too few instances ({total}) for the comparison to mean much"
    if task == "seg":
        ious_a = np.array(ious)
        assert ious_a.mean() >= 0.97 and np.quantile(ious_a, 0.05) >= 0.9, (ious_a.mean(), ious_a.min())
    assert kpt_err <= 1.5 and obb_err <= 1.5, (kpt_err, obb_err)


def test_seg_default_masks_match_ultralytics(task_models, task_images):
    """``retina_masks=False`` vs Ultralytics' default predict (masks at the input size), its masks brought to the
    image as its plotting does (``scale_masks``, > 0.5): same instances, and the masks' IoU (both empty counts as
    equal: a mask wholly in the letterbox padding maps to nothing on either side)."""
    import torch
    from ultralytics.utils import ops

    ref_model = _reference("seg", task_models["seg"]["onnx"])
    ious: list[float] = []
    with unideploy.load(task_models["seg"]["onnx"], conf=0.25, iou=0.7, retina_masks=False) as pred:
        ours_all = pred([str(p) for p in task_images])
    for f, ours in zip(task_images, ours_all):
        r = ref_model.predict(str(f), imgsz=IMGSZ, conf=0.25, iou=0.7, verbose=False)[0]
        b = r.boxes
        pairs = match(ours, b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(np.int64), f"seg-default/{f.name}")
        if not pairs:
            continue
        assert r.masks.data.shape[1:] == (IMGSZ, IMGSZ) and ours.masks.shape == r.orig_shape  # theirs at the input
        ref = (ops.scale_masks(torch.as_tensor(r.masks.data)[None].float(), r.orig_shape)[0] > 0.5).numpy()
        for i, j in pairs:
            a, m = ours.masks.data[i], ref[j]
            ious.append(1.0 if not (a.any() or m.any()) else float(mask_iou(a[None], m[None])[0, 0]))
    ious_a = np.array(ious)
    assert len(ious_a) >= 3 * len(task_images), len(ious_a)
    assert ious_a.mean() >= 0.97 and np.quantile(ious_a, 0.05) >= 0.9, (ious_a.mean(), ious_a.min())


def test_seg_without_prototypes_is_one_line_error(task_models, tmp_path):
    """A -seg file cut down to its detection output names the missing prototypes."""
    import onnx

    m = onnx.load(str(task_models["seg"]["onnx"]))
    keep = [o for o in m.graph.output if o.name == "output0"]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    p = tmp_path / "seg_noproto.onnx"
    onnx.save(m, str(p))
    with pytest.raises(unideploy.ModelError, match=r"mask prototypes .* got output0"):
        unideploy.load(p)


def test_pose_without_kpt_shape_names_the_override(task_models, tmp_path):
    import onnx

    m = onnx.load(str(task_models["pose"]["onnx"]))
    props = [(p.key, p.value) for p in m.metadata_props if p.key != "kpt_shape"]
    del m.metadata_props[:]
    for k, v in props:
        m.metadata_props.add(key=k, value=v)
    p = tmp_path / "pose_nokpt.onnx"
    onnx.save(m, str(p))
    with pytest.raises(unideploy.ModelError, match=r"kpt_shape.*spec=\{'extra': \{'kpt_shape'"):
        unideploy.load(p)
    with unideploy.load(p, spec={"extra": {"kpt_shape": [17, 3]}}) as pred:
        assert pred.adapter.kpt_shape == (17, 3)
        assert pred.spec.extra.get("preprocess") == "ultralytics"  # the override merged into the metadata's extra
