"""Segmentation, pose and oriented boxes through the accelerator targets: ``export --to om`` (Ascend, fake ``atc``)
and ``export --to rknn`` (Rockchip, the rknn-toolkit2 worker protocol), then predict with the ``ascend`` / ``acl`` /
``rknn`` backends against the in-process doubles (tests/doubles), which run the exported ONNX underneath: the OM
double runs the ONNX the fake atc recorded, the RKNN double the ONNX it was built from (fp16 outputs rounded to
float16, INT8 outputs quantized per tensor). Real Ascend / Rockchip hardware is not available here.

The models are the bundled demo checkpoints exported to ONNX at a small input size (they find real instances).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

import unideploy
from unideploy.apps.demo import ASSETS
from unideploy.core.results import OrientedDetections, Poses, Segmentations
from unideploy.tools.convert import export as convert_export

pytest.importorskip("ultralytics")

DOUBLES = Path(__file__).resolve().parent / "doubles"
SOC = "Ascend310P3"
IMGSZ = 96
TASKS = {"seg": Segmentations, "pose": Poses, "obb": OrientedDetections}
FAMILY = {"seg": "yolo_seg", "pose": "yolo_pose", "obb": "yolo_obb"}


@pytest.fixture(scope="module")
def task_onnx(task_demo_onnx) -> dict[str, Path]:
    """Each demo checkpoint exported to ONNX at IMGSZ (Ultralytics' exporter, the task's outputs; conftest.py)."""
    return task_demo_onnx


@pytest.fixture(scope="module")
def task_images() -> dict[str, list[Path]]:
    """Per task 4 of its bundled validation images (the demo models find objects in them)."""
    return {t: sorted((ASSETS / f"val_{t}" / "images").glob("*.jpg"))[:4] for t in TASKS}


@pytest.fixture
def doubles(monkeypatch):
    """The ais_bench / acl doubles importable; forgotten (with their state) afterwards."""
    monkeypatch.syspath_prepend(str(DOUBLES))
    names = lambda: [m for m in sys.modules if m in ("acl", "fake_om") or m.startswith("ais_bench")]  # noqa: E731
    for name in names():
        monkeypatch.delitem(sys.modules, name)
    import acl
    from ais_bench.infer import interface

    acl.reset()
    interface.reset_state()
    interface.use_legacy_api(False)
    yield {"acl": acl, "ais": interface}
    for name in names():
        sys.modules.pop(name, None)


@pytest.fixture
def fake_atc(tmp_path, monkeypatch):
    """An ``atc`` on PATH that checks its flags and writes a fake OM (tests/doubles/fake_atc.py)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "atc"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(DOUBLES / 'fake_atc.py'))} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return exe


@pytest.fixture
def toolkit_double(monkeypatch):
    """The RKNN worker subprocess runs this Python with the rknn-toolkit2 double importable."""
    monkeypatch.setenv("UNIDEPLOY_RKNN_PYTHON", sys.executable)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(DOUBLES), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("DOUBLE_RKNN_FAIL", raising=False)


def check_spec(spec, task: str) -> None:
    """The sidecar spec keeps the task, family and task metadata."""
    assert spec.task == {"seg": "segment", "pose": "pose", "obb": "obb"}[task], spec.task
    assert spec.family == FAMILY[task], spec.family
    if task == "pose":
        assert list(spec.extra["kpt_shape"]) == [5, 3], spec.extra.get("kpt_shape")


def assert_same(ours, ref, task: str, px: float, score: float, mask_iou: float, where: str) -> None:
    """One-to-one instances (class, box within px, score within score) and the task's fields alike."""
    assert type(ours) is TASKS[task] and type(ref) is TASKS[task], where
    assert len(ours) == len(ref), f"{where}: {len(ours)} vs {len(ref)} instances"
    if not len(ref):
        return
    order_o, order_r = np.lexsort((ours.xyxy[:, 0], ours.class_id)), np.lexsort((ref.xyxy[:, 0], ref.class_id))
    o, r = ours[order_o], ref[order_r]
    np.testing.assert_array_equal(o.class_id, r.class_id, err_msg=where)
    np.testing.assert_allclose(o.xyxy, r.xyxy, atol=px, err_msg=where)
    np.testing.assert_allclose(o.confidence, r.confidence, atol=score, err_msg=where)
    if task == "seg":
        a, b = o.masks.data, r.masks.data
        assert a.shape == b.shape and a.dtype == bool, where
        inter = (a & b).sum((1, 2))
        union = np.maximum((a | b).sum((1, 2)), 1)
        assert (inter / union).min() >= mask_iou, f"{where}: mask IoU {(inter / union).min():.4f}"
    if task == "pose":
        np.testing.assert_allclose(o.keypoints.data[..., :2], r.keypoints.data[..., :2], atol=px, err_msg=where)
        np.testing.assert_allclose(o.keypoints.data[..., 2], r.keypoints.data[..., 2], atol=score, err_msg=where)
    if task == "obb":
        np.testing.assert_allclose(o.obb.corners, r.obb.corners, atol=px, err_msg=where)


# ------------------------------------------------------------------------------------------------ Ascend OM


@pytest.mark.parametrize("task", TASKS)
def test_om_export_and_predict_match_onnxruntime(doubles, fake_atc, task_onnx, task_images, tmp_path, task):
    """export --to om (fake atc) keeps every output and the task spec; both Ascend backends give ORT's results."""
    from fake_om import OmModel

    src = task_onnx[task]
    om = convert_export(src, to="om", out=tmp_path / f"{task}.om", soc=SOC, dynamic_batch="1,2,4")
    check_spec(unideploy.read_spec(om), task)
    outs = [o.name for o in OmModel(om).sess.get_outputs()]  # what the fake atc compiled
    assert len(outs) == (2 if task == "seg" else 1), outs  # seg keeps detections and prototypes
    files = task_images[task]
    with unideploy.load(src, conf=0.25) as ref_pred:
        ref = ref_pred(files)
    assert sum(len(r) for r in ref) >= 4
    for backend in ("ascend", "acl"):
        with unideploy.load(om, backend=backend, device="0", batch=2, conf=0.25) as pred:
            assert pred.spec.family == FAMILY[task]
            ours = pred(files)
        for f, o, r in zip(files, ours, ref):
            assert_same(o, r, task, px=1e-3, score=1e-6, mask_iou=1.0, where=f"{backend} {f.name}")
    assert doubles["acl"].live() == {} and doubles["acl"].VIOLATIONS == []


# ------------------------------------------------------------------------------------------------- RKNN


@pytest.mark.parametrize("task", TASKS)
def test_rknn_fp16_export_and_simulate_match_onnxruntime(toolkit_double, task_onnx, task_images, tmp_path, task):
    """export --to rknn (fp16) keeps the outputs and the task spec; the simulator gives ORT's instances (fp16)."""
    src = task_onnx[task]
    out = convert_export(src, to="rknn", out=tmp_path / f"{task}.rknn", target="rk3588", dtype="fp16")
    spec = unideploy.read_spec(out)
    check_spec(spec, task)
    assert spec.in_model == "rknn" and spec.layout == "nhwc" and spec.input_dtype == "uint8"
    files = task_images[task]
    with unideploy.load(src, conf=0.25) as ref_pred:
        ref = ref_pred(files)
    with unideploy.load(out, backend="rknn", conf=0.25) as pred:
        assert pred.session.mode == "simulator"
        assert len(pred.session.outputs) == (2 if task == "seg" else 1)
        ours = pred(files)
    # fp16 outputs (the double rounds them as the NPU computes): boxes and keypoints within a model-input pixel's
    # fraction scaled to the image, scores within fp16 resolution
    for f, o, r in zip(files, ours, ref):
        px = 0.5 * max(r.image_shape) / IMGSZ
        assert_same(o, r, task, px=px, score=2e-3, mask_iou=0.9, where=f"rknn fp16 {f.name}")


@pytest.mark.parametrize("task", TASKS)
def test_rknn_int8_keeps_the_scores(toolkit_double, task_onnx, task_images, tmp_path, task):
    """INT8: the head's Concat is split off (box pixels, 0-1 scores and the task's columns get their own scales),
    so the quantized model still finds most of ORT's instances; seg keeps its prototype output."""
    src = task_onnx[task]
    calib = tmp_path / "calib"
    calib.mkdir()
    for f in sorted((ASSETS / f"val_{task}" / "images").glob("*.jpg"))[4:12]:
        shutil.copy(f, calib / f.name)
    out = convert_export(src, to="rknn", out=tmp_path / f"{task}.rknn", target="rk3588", dtype="int8",
                         calib=str(calib), calib_count=8)
    spec = unideploy.read_spec(out)
    check_spec(spec, task)
    rk = spec.extra["rknn"]
    # boxes, scores and the task's columns (nested Concats opened), then -seg's prototypes as they are
    assert rk["dtype"] == "int8" and rk["concat_parts"] == 3 and rk["concat_axis"] == 1, rk
    assert rk["split_outputs"][3:] == (["output1"] if task == "seg" else []), rk
    files = task_images[task]
    with unideploy.load(src, conf=0.25) as ref_pred:
        ref = ref_pred(files)
    with unideploy.load(out, backend="rknn", conf=0.25) as pred:
        ours = pred(files)
    found = total = 0
    for o, r in zip(ours, ref):
        total += len(r)
        px = 3.0 * max(r.image_shape) / IMGSZ
        if len(o) and len(r):
            close = (np.abs(o.xyxy[:, None] - r.xyxy[None]).max(-1) <= px) & (o.class_id[:, None] == r.class_id[None])
            found += int(close.any(0).sum())
    assert total >= 4 and found >= 0.75 * total, f"{found}/{total}"
    assert sum(len(o) for o in ours) <= 2 * total  # no flood of spurious boxes (scores sharing the pixels' scale)
    assert all(type(o) is TASKS[task] for o in ours)
