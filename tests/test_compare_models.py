"""unideploy compare on real exported models: identical, perturbed, INT8, class-dropping, reshaped, cross-backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import unideploy
from conftest import has_module
from unideploy.cli.main import main

pytestmark = pytest.mark.slow

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def v8(yolo_models) -> Path:
    return yolo_models["yolov8n"]["onnx"]


@pytest.fixture(scope="module")
def perturbed(v8, tmp_path_factory) -> tuple[Path, str]:
    """yolov8n with the weights of one mid-graph Conv perturbed by 5% of their spread; (path, node name)."""
    model = onnx.load(str(v8))
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    node = convs[len(convs) // 2]
    init = inits[node.input[1]]
    w = numpy_helper.to_array(init)
    w = w + np.random.default_rng(0).normal(0, 0.05 * w.std(), w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    out = tmp_path_factory.mktemp("perturbed") / "yolov8n_perturbed.onnx"
    onnx.save(model, str(out))
    return out, node.name


@pytest.fixture(scope="module")
def int8(v8, image_dir, tmp_path_factory) -> Path:
    """yolov8n statically quantised (QDQ, Conv only: the head's score/box concat stays float) on 4 images."""
    q = pytest.importorskip("onnxruntime.quantization")
    with unideploy.load(v8) as p:
        batches = [p.preprocess(unideploy.read_image(f))[0][None] for f in sorted(image_dir.glob("*.jpg"))[:4]]
        name = p.session.inputs[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: b} for b in batches])

        def get_next(self):
            return next(self.it, None)

    out = tmp_path_factory.mktemp("int8") / "yolov8n_int8.onnx"
    q.quantize_static(str(v8), str(out), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=False,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8, op_types_to_quantize=["Conv"])
    return out


@pytest.fixture(scope="module")
def doubled(v8, tmp_path_factory) -> Path:
    """yolov8n whose output is concatenated with itself: (1, 84, 4200) instead of (1, 84, 2100)."""
    model = onnx.load(str(v8))
    out = model.graph.output[0]
    inner = out.name + "_single"
    for n in model.graph.node:
        n.output[:] = [inner if o == out.name else o for o in n.output]
    model.graph.node.append(onnx.helper.make_node("Concat", [inner, inner], [out.name], axis=2))
    out.type.tensor_type.shape.dim[2].dim_value = 2 * out.type.tensor_type.shape.dim[2].dim_value
    path = tmp_path_factory.mktemp("doubled") / "yolov8n_doubled.onnx"
    onnx.save(model, str(path))
    return path


def test_identical_models_pass_with_zero_error(v8, image_dir):
    r = unideploy.compare(v8, f"{v8}@onnxruntime:cpu", image_dir, samples=6)
    assert r, r.table()
    t = r.tensor("output0")
    assert (t.samples, t.shape) == (6, (1, 84, 2100))
    assert (t.max_abs, t.mean_abs, t.median_abs, t.max_rel, t.fail_pct) == (0, 0, 0, 0, 0)
    assert t.cosine == pytest.approx(1.0) and t.cosine_min == pytest.approx(1.0)
    d = r.detection
    assert d.images == 6 and d.ref_boxes > 50
    assert (d.matched, d.missed, d.extra) == (d.ref_boxes, 0, 0) and d.cand_boxes == d.ref_boxes
    assert (d.shift_px_max, d.score_delta_max, d.mean_iou) == (0, 0, 1.0) and d.worst == []
    assert r.pairing == "name" and all(c.passed for c in r.checks) and len(r.checks) == 6


def test_perturbed_weight_fails_tensor_checks_and_locates_the_layer(v8, perturbed, image_dir):
    path, node = perturbed
    r = unideploy.compare(v8, path, image_dir, samples=3, layers=True)
    assert not r
    failed = {c.name for c in r.failures if c.level == "tensor"}
    assert "output0 fail_pct" in failed, r.table()
    t = r.tensor("output0")
    assert t.max_abs > 1e-2 and t.fail_pct > 1.0
    L = r.layers
    assert L.skipped is None and L.compared > 100
    assert L.first_diverging.node == node and L.first_diverging.op == "Conv"
    before = L.layers[: L.layers.index(L.first_diverging)]
    assert before and all(layer.stats.max_abs == 0 for layer in before)  # everything upstream is bit-identical
    assert f"first diverging: {L.first_diverging.tensor} (node {node}, Conv" in r.table()


def test_int8_candidate_reports_bounded_error_and_matched_boxes(v8, int8, image_dir):
    r = unideploy.compare(v8, int8, image_dir, samples=8)
    t = r.tensor("output0")
    assert 0 < t.median_abs < 0.1 and 0 < t.max_abs < t.ref_absmax  # non-zero, bounded by the output scale
    assert 0.95 < t.cosine_min < 1.0 and 0 < t.fail_pct < 100
    assert not r and any(c.level == "tensor" for c in r.failures)  # FP32 tolerances do not hold for INT8
    d = r.detection
    assert d.ref_boxes > 50 and d.matched > 0.4 * d.ref_boxes
    assert 0.5 <= d.mean_iou < 1.0 and 0 < d.score_delta_mean <= d.score_delta_max < 1.0
    assert 0 < d.shift_px_mean <= d.shift_px_max
    assert d.matched + d.crossed_down + d.missed == d.ref_boxes
    assert d.matched + d.crossed_up + d.extra == d.cand_boxes
    assert d.worst and d.worst[0].badness >= d.worst[-1].badness
    # loose INT8 tolerances at the tensor level pass
    loose = unideploy.compare(v8, int8, image_dir, samples=8, level="tensor", min_cosine=0.95, max_fail_pct=100)
    assert loose and loose.detection is None


def test_candidate_that_drops_classes_reports_them_missed(v8, image_dir):
    files = sorted(image_dir.iterdir())[:6]
    with unideploy.load(v8, conf=0.25, max_det=3000) as p:
        ref = p(files)
    dropped = sum(int((d.class_id >= 40).sum()) for d in ref)
    kept = sum(int((d.class_id < 40).sum()) for d in ref)
    assert dropped > 10 and kept > 10
    r = unideploy.compare(v8, v8, files, max_det=3000, cand_options={"classes": list(range(40))})
    d = r.detection
    assert (d.ref_boxes, d.matched, d.missed, d.extra) == (dropped + kept, kept, dropped, 0)
    assert d.shift_px_max == 0 and d.score_delta_max == 0
    assert [c.name for c in r.failures] == ["missed_frac"]  # raw outputs are identical
    assert all(b["class_id"] >= 40 for w in d.worst for b in w.missed_boxes)


def test_different_output_shapes_fail_clearly(v8, doubled, image_dir):
    r = unideploy.compare(v8, doubled, image_dir, samples=2)
    assert not r
    t = r.tensors[0]
    assert t.error == "shape mismatch: reference (1, 84, 2100), candidate (1, 84, 4200)"
    assert any(c.detail == t.error and not c.passed for c in r.checks)
    assert r.detection is not None and r.detection.images == 2  # the task level still ran
    assert "shape mismatch: reference (1, 84, 2100), candidate (1, 84, 4200)" in r.table()


def test_different_input_sizes_fail_the_tensor_level_and_compare_tasks(yolo_models, v8, image_dir):
    r = unideploy.compare(v8, yolo_models["yolo11n"]["onnx"], image_dir, samples=2)
    assert not r
    c = r.failures[0]
    assert c.level == "tensor" and "cannot take the reference's preprocessed input (1, 3, 320, 320)" in c.detail
    assert r.tensors == [] and r.detection.images == 2
    assert any("input sizes differ" in n for n in r.notes)
    assert any("preprocesses 2 of 2 image(s) differently" in n for n in r.notes)


@pytest.mark.skipif(not has_module("openvino"), reason="openvino not installed")
def test_cross_backend_onnxruntime_vs_openvino(yolo_models, v8, image_dir):
    xml = yolo_models["yolov8n"]["openvino"]
    r = unideploy.compare(f"{v8}@onnxruntime", f"{xml}@openvino:CPU", image_dir, samples=4)
    assert r.candidate.endswith("@openvino:CPU") and r.pairing == "name"
    t = r.tensor("output0")
    assert t.cosine_min > 0.99 and t.samples == 4  # FP32, or BF16 on CPUs where OpenVINO defaults to it
    assert r.detection.matched > 0.5 * r.detection.ref_boxes
    # in FP32 (not the BF16 some CPUs default to) OpenVINO passes the FP32 tolerances
    f32 = unideploy.compare(f"{v8}@onnxruntime", f"{v8}@openvino:CPU", image_dir, samples=4,
                            cand_options={"precision": "f32"}, layers=True)
    assert f32, f32.table()
    assert f32.layers.compared > 100 and f32.layers.first_diverging is None  # layer sessions get precision too
    assert f32.tensor("output0").max_abs < 0.1 and f32.detection.shift_px_max < 0.5
    assert not any("computes in" in n for n in f32.notes)


@pytest.mark.gpu
def test_cpu_vs_cuda(v8, image_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here")
    r = unideploy.compare(f"{v8}@onnxruntime:cpu", f"{v8}@onnxruntime:cuda:0", image_dir, samples=4, layers=True)
    assert r.candidate.endswith("@onnxruntime:cuda:0")
    assert r, r.table()  # cuDNN FP32 (TF32 off in ORT by default) stays within the FP32 tolerances


def test_random_inputs_and_predictor_objects(v8):
    with unideploy.load(v8) as a, unideploy.load(v8) as b:
        r = unideploy.compare(a, b, random=True, samples=2)
        assert r and r.samples == 2 and r.source == "random"
        assert len(a(np.zeros((32, 32, 3), np.uint8))) >= 0  # predictors given by the caller stay open


def test_cli_exit_codes_and_json(v8, perturbed, image_dir, tmp_path, capsys):
    out = tmp_path / "same.json"
    rc = main(["compare", str(v8), f"{v8}@onnxruntime", "--data", str(image_dir), "--samples", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "result: PASS" in text and "tensor level" in text and "detection level" in text
    d = json.loads(out.read_text())
    assert set(d) >= {"passed", "ref", "candidate", "source", "samples", "level", "task", "conf", "thresholds",
                      "pairing", "tensors", "detection", "classification", "layers", "checks", "notes", "skipped"}
    assert d["passed"] is True and d["samples"] == 2 and d["task"] == "detect"
    assert set(d["tensors"][0]) >= {"name", "shape", "cosine", "cosine_min", "max_abs", "mean_abs", "median_abs",
                                    "max_rel", "mean_rel", "median_rel", "fail_pct"}
    assert set(d["detection"]) >= {"matched", "missed", "extra", "shift_px_mean", "shift_px_max", "score_delta_mean",
                                   "score_delta_max", "worst"}
    assert all(set(c) >= {"level", "name", "value", "op", "limit", "passed"} for c in d["checks"])

    rc = main(["compare", str(v8), str(perturbed[0]), "--data", str(image_dir), "--samples", "2", "--quiet",
               "--json", str(tmp_path / "bad.json")])
    text = capsys.readouterr().out
    assert rc == 1 and text.startswith("result: FAIL") and len(text.strip().splitlines()) == 1
    assert json.loads((tmp_path / "bad.json").read_text())["passed"] is False

    # loosened thresholds turn the same comparison into a pass
    rc = main(["compare", str(v8), str(perturbed[0]), "--data", str(image_dir), "--samples", "2", "--quiet",
               "--level", "tensor", "--min-cosine", "0.5", "--max-fail-pct", "100"])
    assert rc == 0, capsys.readouterr().out

    rc = main(["compare", str(v8), str(v8), "--random", "--samples", "1", "--option", "threads", "--quiet"])
    assert rc == 1 and "--option expects KEY=VALUE" in capsys.readouterr().err

    rc = main(["compare", f"{v8}@tensorflow", str(v8), "--random"])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "expected MODEL[@backend[:device]] with backend one of" in err and "onnxruntime" in err
