"""Segmentation, pose and oriented boxes through the toolchain: export, quantize, offline, pipelines, video, Ray.

The models are the bundled demo checkpoints (``assets/demo/shapes_yolov8_{seg,pose,obb}.pt``, trained, so they
find real instances), exported here at a small input size to keep every test fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from conftest import has_module
from unideploy.apps.demo import ASSETS
from unideploy.apps.task_rows import decode_task, encode_task
from unideploy.core.results import Detections, OrientedDetections, Poses, Segmentations

pytest.importorskip("ultralytics")

IMGSZ = 96
TASKS = {"seg": Segmentations, "pose": Poses, "obb": OrientedDetections}
NC = {"seg": 6, "pose": 1, "obb": 3}
ANCHORS = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))


def same(a, b, where: str) -> None:
    """Exactly the same result: boxes, scores, classes and the task's own fields."""
    assert type(a) is type(b), where
    assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)}"
    np.testing.assert_array_equal(a.xyxy, b.xyxy, err_msg=where)
    np.testing.assert_array_equal(a.confidence, b.confidence, err_msg=where)
    np.testing.assert_array_equal(a.class_id, b.class_id, err_msg=where)
    if isinstance(a, Segmentations):
        np.testing.assert_array_equal(a.masks.data, b.masks.data, err_msg=where)
    if isinstance(a, Poses):
        np.testing.assert_array_equal(a.keypoints.data, b.keypoints.data, err_msg=where)
    if isinstance(a, OrientedDetections):
        np.testing.assert_array_equal(a.obb.xywhr, b.obb.xywhr, err_msg=where)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Each demo checkpoint exported to ONNX (API) and OpenVINO (from that ONNX) at IMGSZ."""
    d = tmp_path_factory.mktemp("task_toolchain")
    out = {}
    for t in TASKS:
        pt = d / f"{t}.pt"
        shutil.copy(ASSETS / f"shapes_yolov8_{t}.pt", pt)
        out[t] = {"pt": pt, "onnx": Path(unideploy.export(pt, to="onnx", imgsz=IMGSZ))}
        if has_module("openvino"):
            out[t]["openvino"] = Path(unideploy.export(out[t]["onnx"], to="openvino"))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Per task a folder of 4 of its bundled validation images (the demo models find objects in them)."""
    d = tmp_path_factory.mktemp("task_images")
    out = {}
    for t in TASKS:
        folder = d / t
        folder.mkdir()
        for f in sorted((ASSETS / f"val_{t}" / "images").glob("*.jpg"))[:4]:
            shutil.copy(f, folder / f.name)
        out[t] = folder
    return out


@pytest.mark.parametrize("task", TASKS)
def test_export_writes_the_task_layout(models, images, task):
    """ONNX and OpenVINO exports of a -seg/-pose/-obb .pt carry the task's outputs and spec, and predict alike."""
    import onnx

    m = onnx.load(str(models[task]["onnx"]))
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output]
    want = {"seg": [[1, 4 + NC["seg"] + 32, ANCHORS], [1, 32, IMGSZ // 4, IMGSZ // 4]],
            "pose": [[1, 4 + 1 + 5 * 3, ANCHORS]], "obb": [[1, 4 + NC["obb"] + 1, ANCHORS]]}[task]
    assert shapes == want
    files = sorted(images[task].iterdir())
    found = 0
    for fmt, path in models[task].items():
        if fmt == "pt":
            continue
        spec = unideploy.read_spec(path)
        assert (spec.task, spec.imgsz) == ({"seg": "segment"}.get(task, task), (IMGSZ, IMGSZ)), fmt
        if task == "pose":
            assert list(spec.extra["kpt_shape"]) == [5, 3]
        options = {"precision": "f32"} if fmt == "openvino" else {}
        with unideploy.load(path, conf=0.25, **options) as pred:
            res = pred(files)
        assert all(type(r) is TASKS[task] for r in res), fmt
        if fmt == "onnx":
            ref = res
            found = sum(len(r) for r in res)
        else:  # OpenVINO in f32 on the same file: the same instances, boxes within a hundredth of a pixel
            for a, b in zip(res, ref):
                assert len(a) == len(b), fmt
                np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.01)
    assert found >= 4, f"the demo {task} model found only {found} instances in 4 of its validation images"


@pytest.mark.parametrize("task", TASKS)
def test_quantize_accepts_the_tasks(models, images, task, tmp_path):
    """INT8 (ONNX Runtime static, calibrated on the images) keeps the layout and finds most float instances."""
    pytest.importorskip("onnxruntime.quantization")
    files = sorted(images[task].iterdir())
    r = unideploy.quantize(models[task]["onnx"], files, backend="onnxruntime", out=tmp_path / f"{task}_int8.onnx",
                           speed=False, write_report=False)
    with unideploy.load(models[task]["onnx"], conf=0.25) as f32, unideploy.load(r.path, conf=0.25) as i8:
        a, b = f32(files), i8(files)
    assert all(type(x) is TASKS[task] for x in b)
    n_f, n_i = sum(map(len, a)), sum(map(len, b))
    assert n_i >= 0.5 * n_f > 0, (n_f, n_i)


def test_quantize_openvino_segmentation(models, images, tmp_path):
    """NNCF INT8 of a segmentation IR: masks still come out, at the image size."""
    pytest.importorskip("nncf")
    if "openvino" not in models["seg"]:
        pytest.skip("openvino not installed")
    files = sorted(images["seg"].iterdir())
    r = unideploy.quantize(models["seg"]["openvino"], files, backend="openvino", out=tmp_path / "int8" / "seg.xml",
                           speed=False, write_report=False)
    with unideploy.load(r.path, conf=0.25) as pred:
        res = pred(files)
    assert sum(map(len, res)) > 0
    for f, s in zip(files, res):
        assert isinstance(s, Segmentations) and s.masks.data.shape[1:] == cv2.imread(str(f)).shape[:2]


@pytest.mark.parametrize("task", TASKS)
def test_three_stages_equal_predict(models, images, task, tmp_path):
    """preprocess -> infer -> postprocess gives exactly predict's results, and its COCO JSON has the task's fields."""
    from unideploy.tools import offline

    model, folder = models[task]["onnx"], images[task]
    man = offline.preprocess(model, folder, tmp_path / "pre")
    rep = offline.infer(model, [tmp_path / "pre"], tmp_path / "out", output_dirname="run")
    res = offline.postprocess(model, rep.output_dir, man, conf=0.25, save_json=str(tmp_path / "p.json"))
    with unideploy.load(model, conf=0.25, in_model_preprocess=False) as pred:
        ref = {f.name: pred(f) for f in sorted(folder.iterdir())}
    assert [n for n, _ in res] == list(ref)
    for name, r in res:
        same(r, ref[name], name)
    records = json.loads((tmp_path / "p.json").read_text())
    key = {"seg": "segmentation", "pose": "keypoints", "obb": "rbox"}[task]
    assert records and all(key in rec for rec in records)
    if task == "seg":  # retina_masks=False through the three stages too
        res = offline.postprocess(model, rep.output_dir, man, conf=0.25, retina_masks=False)
        with unideploy.load(model, conf=0.25, in_model_preprocess=False, retina_masks=False) as pred:
            for name, r in res:
                same(r, pred(folder / name), name)


def test_pipeline_accepts_the_tasks(models, images):
    """A graph: segmentation -> largest 2 -> crops -> pose per crop, mapped back; an OBB branch beside it."""
    from unideploy.apps.graphs import Crop, Filter, Graph, Merge, Model

    g = Graph([Model("seg", models["seg"]["onnx"], conf=0.25), Filter("big", max_det=2),
               Crop("crops", ["input", "big"], pad=0.1), Model("kp", models["pose"]["onnx"], conf=0.1),
               Merge("mapped", ["big", "kp"]), Model("rot", models["obb"]["onnx"], ["input"], conf=0.25)],
              output="mapped")
    files = sorted(images["seg"].iterdir())
    with g, unideploy.load(models["seg"]["onnx"], conf=0.25) as seg, \
            unideploy.load(models["obb"]["onnx"], conf=0.25) as obb:
        assert g.types["seg"] == g.types["rot"] == "detections" and g.types["kp"] == "crops/detections"
        for f in files:
            out = g(f)
            same(out["seg"], seg(f), f.name)
            same(out["rot"], obb(f), f.name)
            assert isinstance(out["big"], Segmentations) and len(out["big"]) == min(2, len(out["seg"]))
            assert isinstance(out.output, Detections)


@pytest.mark.parametrize("task", TASKS)
def test_video_predict_writes_task_records(models, images, task, tmp_path):
    """A video through predict: one JSON line per frame with the task's fields, and an annotated video."""
    frames = [cv2.resize(cv2.imread(str(f)), (160, 128)) for f in sorted(images[task].iterdir())]
    w = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 128))
    for fr in frames:
        w.write(fr)
    w.release()
    with unideploy.load(models[task]["onnx"], conf=0.25) as pred:
        unideploy.predict(pred, tmp_path / "clip.avi", save_video=tmp_path / "out.mp4",
                          save_jsonl=tmp_path / "out.jsonl")
    recs = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(recs) == len(frames)
    key = {"seg": "mask", "pose": "keypoints", "obb": "poly"}[task]
    dets = [d for r in recs for d in r["detections"]]
    assert dets and all(key in d for d in dets)
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(frames)
    cap.release()


@pytest.mark.parametrize("task", TASKS)
def test_serve_records_and_ray_rows_keep_the_task(models, images, task):
    """What Ray Serve answers (``result_json``) carries the task's fields; Ray Data rows rebuild the exact result."""
    from unideploy.apps.serving import result_json

    with unideploy.load(models[task]["onnx"], conf=0.25) as pred:
        res = pred(sorted(images[task].iterdir()))
    for r in res:
        body = json.loads(json.dumps(result_json("x.jpg", r)))
        key = {"seg": "mask", "pose": "keypoints", "obb": "xywhr"}[task]
        assert len(body["detections"]) == len(r) and all(key in d for d in body["detections"])
        plain = Detections(r.xyxy, r.confidence, r.class_id, r.names, r.image_shape)
        same(decode_task(plain, encode_task(r)), r, task)
        same(decode_task(plain[:0], encode_task(r[:0])), r[:0], task)


@pytest.mark.slow
def test_ray_predict_equals_single_process(models, images, tmp_path):
    """Ray Data predict of each task equals the single-process results, masks/keypoints/rotated boxes included."""
    pytest.importorskip("ray.data")
    from unideploy import ray as uray
    from unideploy.apps import distributed

    ray = distributed.init(num_cpus=2)
    try:
        for task in TASKS:
            res = uray.predict(models[task]["onnx"], images[task], concurrency=1, batch_size=2, conf=0.25,
                               save_json=tmp_path / f"{task}.json")
            with unideploy.load(models[task]["onnx"], conf=0.25) as pred:
                for name, det in res:
                    same(det, pred(images[task] / name), f"{task}/{name}")
            key = {"seg": "segmentation", "pose": "keypoints", "obb": "rbox"}[task]
            assert all(key in rec for rec in json.loads((tmp_path / f"{task}.json").read_text()))
    finally:
        ray.shutdown()
