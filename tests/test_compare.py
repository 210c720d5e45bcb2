"""Unit tests of unideploy.tools.compare on arrays and result objects (no models, fast)."""

from __future__ import annotations

import numpy as np
import pytest

import unideploy
from unideploy.runtime.backends.base import TensorInfo
from unideploy.tools.compare import (ClassificationAccumulator, DetectionAccumulator, Thresholds, compare_tensors, cosine,
                               match_detections, pair_outputs, parse_target)
from unideploy.tools.compare.result import Check, CompareResult
from unideploy.core.errors import InputError
from unideploy.core.results import Classifications, Detections


# -- tensors ---------------------------------------------------------------------------------------------
def test_identical_tensors_have_zero_error():
    x = np.random.default_rng(0).normal(size=(2, 84, 50)).astype(np.float32)
    s = compare_tensors(x, x.copy())
    assert s.ok and s.cosine == pytest.approx(1.0) and s.cosine_min == pytest.approx(1.0)
    assert (s.max_abs, s.mean_abs, s.median_abs, s.max_rel, s.fail_pct, s.nonfinite) == (0, 0, 0, 0, 0, 0)


def test_tensor_metrics_against_numpy():
    rng = np.random.default_rng(1)
    b = rng.normal(size=1000)
    b[:10] = 0.0  # relative error must not divide by zero
    a = b + rng.normal(scale=0.01, size=1000)
    s = compare_tensors(a, b, atol=0.005, rtol=0.01, eps=1e-6)
    err = np.abs(a - b)
    rel = err / np.maximum(np.abs(b), 1e-6)
    assert s.max_abs == pytest.approx(err.max()) and s.mean_abs == pytest.approx(err.mean())
    assert s.median_abs == pytest.approx(np.median(err))
    assert s.max_rel == pytest.approx(rel.max()) and s.mean_rel == pytest.approx(rel.mean())
    assert np.isfinite(s.max_rel)
    assert s.fail_pct == pytest.approx(100 * np.mean(~np.isclose(a, b, rtol=0.01, atol=0.005)))
    assert s.cosine == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_cosine_ignores_scale_but_errors_do_not():
    b = np.linspace(1, 2, 100)
    s = compare_tensors(1.5 * b, b)
    assert s.cosine == pytest.approx(1.0)
    assert s.fail_pct == 100.0 and s.max_abs == pytest.approx(1.0)


def test_cosine_edge_cases():
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), np.ones(3)) == 0.0
    assert cosine(np.ones(3), -np.ones(3)) == pytest.approx(-1.0)


def test_nonfinite_values_fail_unless_equal():
    b = np.array([1.0, np.nan, np.inf, 2.0])
    a = np.array([1.0, np.nan, np.inf, np.nan])
    s = compare_tensors(a, b)
    assert s.nonfinite == 1 and s.fail_pct == 25.0 and s.max_abs == 0.0


def test_shape_mismatch_is_reported_not_raised():
    s = compare_tensors(np.zeros((1, 84, 10)), np.zeros((1, 84, 20)), name="output0")
    assert not s.ok and "shape mismatch" in s.error and "(1, 84, 20)" in s.error


def test_accumulator_over_samples_keeps_worst_cosine():
    from unideploy.tools.compare import TensorAccumulator

    acc = TensorAccumulator("y", atol=0, rtol=0)
    acc.update(np.array([1.0, 0.0]), np.array([1.0, 0.0]))
    acc.update(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    s = acc.result()
    assert s.samples == 2 and s.cosine_min == 0.0 and s.cosine == pytest.approx(0.5)
    assert s.fail_pct == 50.0


def _ti(name, shape=(1, 84, 2100)):
    return TensorInfo(name, shape, np.dtype("float32"))


def test_pair_outputs_by_name_position_and_partial():
    by_name = pair_outputs([_ti("a"), _ti("b")], [_ti("b"), _ti("a")])
    assert by_name.by == "name" and by_name.pairs == [(0, 1, "a"), (1, 0, "b")]
    by_pos = pair_outputs([_ti("output0")], [_ti("Identity:0")])
    assert by_pos.by == "position" and by_pos.pairs == [(0, 0, "output0/Identity:0")]
    partial = pair_outputs([_ti("a"), _ti("b")], [_ti("a")])
    assert partial.by == "partial" and partial.pairs == [(0, 0, "a")] and partial.unmatched_ref == ["b"]


# -- targets and thresholds --------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("m.onnx", ("m.onnx", None, None)),
    ("m.onnx@onnxruntime", ("m.onnx", "onnxruntime", None)),
    ("m.onnx@ort:cuda:0", ("m.onnx", "onnxruntime", "cuda:0")),
    ("dir/m.xml@openvino:GPU.0", ("dir/m.xml", "openvino", "GPU.0")),
    ("C:/models/m@v2.onnx@OV:CPU", ("C:/models/m@v2.onnx", "openvino", "CPU")),
])
def test_parse_target(text, expected):
    t = parse_target(text)
    assert (t.model, t.backend, t.device) == expected


def test_parse_target_existing_path_with_at_sign(tmp_path):
    p = tmp_path / "m@onnxruntime"
    p.write_bytes(b"")
    assert parse_target(str(p)).model == str(p)


def test_parse_target_unknown_backend_lists_valid_ones():
    with pytest.raises(InputError, match=r"backend one of .*onnxruntime.*got backend 'tensorflow'"):
        parse_target("m.onnx@tensorflow")


def test_thresholds_reject_negative_and_unknown():
    with pytest.raises(InputError, match="atol must be a number >= 0"):
        Thresholds(atol=-1)
    with pytest.raises(InputError, match=r"unknown threshold\(s\) \['atoll'\]"):
        unideploy.compare("a.onnx", "b.onnx", random=True, atoll=1)


def test_compare_argument_errors():
    with pytest.raises(InputError, match="give data"):
        unideploy.compare("a.onnx", "b.onnx")
    with pytest.raises(InputError, match="not both"):
        unideploy.compare("a.onnx", "b.onnx", "imgs/", random=True)
    with pytest.raises(InputError, match="level must be one of"):
        unideploy.compare("a.onnx", "b.onnx", random=True, level="pixels")


# -- detections ---------------------------------------------------------------------------------------------
def _dets(boxes, conf, cls):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(conf), np.array(cls))


def test_match_is_one_to_one_by_class_and_iou():
    ref = _dets([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 0, 1])
    cand = _dets([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], [0.9, 0.7, 0.6], [0, 2, 1])
    pairs, un_ref, un_cand = match_detections(ref, cand, iou=0.5)
    assert pairs.tolist() == [[0, 0]]  # box 1 has no second partner; box 2 differs in class
    assert un_ref.tolist() == [1, 2] and un_cand.tolist() == [1, 2]


def test_match_degenerate_boxes():
    ref = _dets([[5, 0, 5, 10]], [0.9], [0])  # zero width: IoU would be 0/0
    pairs, _, _ = match_detections(ref, _dets([[5, 0, 5, 10]], [0.9], [0]))
    assert pairs.tolist() == [[0, 0]]


def test_dropped_detections_are_reported_as_missed():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 500, (20, 2))
    boxes = np.hstack([xy, xy + rng.uniform(20, 80, (20, 2))])
    conf = rng.uniform(0.4, 0.95, 20)
    cls = rng.integers(0, 3, 20)
    ref = _dets(boxes, conf, cls)
    keep = np.ones(20, bool)
    keep[[2, 7, 11]] = False
    cand = ref[keep]
    cand.xyxy[:, 0] += 1.5  # every kept box moved 1.5 px, scores moved 0.02
    cand.confidence[:] += 0.02
    acc = DetectionAccumulator(conf=0.25, iou=0.5)
    diff = acc.update("a.jpg", ref, cand)
    s = acc.result()
    counts = (s.ref_boxes, s.cand_boxes, s.matched, s.crossed_down, s.crossed_up, s.missed, s.extra)
    assert counts == (20, 17, 17, 0, 0, 3, 0)
    assert s.missed_frac == pytest.approx(3 / 20)
    assert s.shift_px_max == pytest.approx(1.5) and s.shift_px_mean == pytest.approx(1.5)
    assert s.score_delta_max == pytest.approx(0.02, abs=1e-6)
    expected = sorted(round(float(c), 5) for c in ref.confidence[[2, 7, 11]])
    assert sorted(b["confidence"] for b in diff.missed_boxes) == expected
    assert s.worst and s.worst[0].name == "a.jpg"


def test_boxes_crossing_the_threshold_are_not_missed():
    ref = _dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.26, 0.9], [0, 0])
    cand = _dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.24, 0.9], [0, 0])  # 0.24 < conf, within the margin
    acc = DetectionAccumulator(conf=0.25, iou=0.5, margin=0.1)
    acc.update("a", ref, cand)
    s = acc.result()
    assert (s.matched, s.crossed_down, s.crossed_up, s.missed, s.extra) == (1, 1, 0, 0, 0)
    assert (s.ref_boxes, s.cand_boxes) == (2, 1)
    assert s.score_delta_max == pytest.approx(0.02, abs=1e-6)
    # both below the threshold: not counted at all
    acc2 = DetectionAccumulator(conf=0.25, iou=0.5, margin=0.1)
    acc2.update("b", _dets([[0, 0, 9, 9]], [0.2], [0]), _dets([], [], []))
    assert (acc2.result().ref_boxes, acc2.result().missed) == (0, 0)


def test_extra_detections():
    acc = DetectionAccumulator(conf=0.25)
    acc.update("a", Detections.empty(), _dets([[0, 0, 5, 5]], [0.5], [1]))
    s = acc.result()
    assert (s.extra, s.extra_frac, s.missed) == (1, 1.0, 0)


# -- classification ------------------------------------------------------------------------------------
def test_classification_agreement_overlap_and_prob_delta():
    acc = ClassificationAccumulator()
    probs = np.array([0.05, 0.6, 0.2, 0.1, 0.03, 0.02])
    same = Classifications(np.argsort(-probs)[:5], np.sort(probs)[::-1][:5], probs=probs)
    acc.update("same.jpg", same, same)
    p2 = probs.copy()
    p2[[1, 2]] = [0.35, 0.45]  # top-1 flips from class 1 to class 2
    acc.update("flip.jpg", same, Classifications(np.argsort(-p2)[:5], np.sort(p2)[::-1][:5], probs=p2))
    s = acc.result()
    assert s.images == 2 and s.top1_agreement == 0.5 and s.top5_overlap == 1.0
    assert s.prob_delta_max == pytest.approx(0.25) and s.prob_delta_mean == pytest.approx(0.125)
    assert s.disagreements == [{"name": "flip.jpg", "ref": {"class_id": 1, "confidence": pytest.approx(0.6)},
                                "cand": {"class_id": 2, "confidence": pytest.approx(0.45)}}]


def test_classification_without_probs_uses_common_topk():
    acc = ClassificationAccumulator()
    acc.update("a", Classifications([3, 1, 4, 5, 6], [0.5, 0.2, 0.1, 0.1, 0.1]),
               Classifications([3, 1, 7, 8, 9], [0.4, 0.25, 0.1, 0.1, 0.1]))
    s = acc.result()
    assert s.top1_agreement == 1.0 and s.top5_overlap == pytest.approx(0.4)
    assert s.prob_delta_max == pytest.approx(0.1)


# -- result object -------------------------------------------------------------------------------------
def test_result_truth_value_and_json(tmp_path):
    r = CompareResult("a", "b", "random", 1, "all", "detect", Thresholds(), 0.25)
    assert not r  # nothing checked is not a pass
    r.checks.append(Check("tensor", "y cosine_min", 1.0, ">=", 0.999, True))
    assert r and r.passed and "result: PASS" in r.table()
    r.checks.append(Check("detect", "missed_frac", 0.5, "<=", 0.05, False))
    assert not r and [c.name for c in r.failures] == ["missed_frac"]
    assert "result: FAIL (1 of 2 checks failed)" in r.table()
    r.save_json(tmp_path / "r.json")
    import json

    d = json.loads((tmp_path / "r.json").read_text())
    assert d["passed"] is False and d["thresholds"]["atol"] == 1e-3 and len(d["checks"]) == 2


def test_classification_report_table():
    acc = ClassificationAccumulator()
    acc.update("a.jpg", Classifications([1, 2], [0.6, 0.3]), Classifications([2, 1], [0.5, 0.4]))
    r = CompareResult("a", "b", "imgs", 1, "task", "classify", Thresholds(), 0.25, classification=acc.result())
    r.checks.append(Check("classify", "top1_agreement", 0.0, ">=", 0.99, False))
    text = r.table()
    assert "top-1 agreement" in text and "a.jpg: reference class 1 (0.600), candidate class 2 (0.500)" in text
    assert r.to_dict()["classification"]["top1_agreement"] == 0.0


def test_unideploy_compare_is_callable_in_any_import_order():
    import subprocess
    import sys

    code = ("from unideploy.tools.compare import Thresholds; import unideploy, sys; "
            "assert callable(unideploy.compare) and callable(unideploy.quantize); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'openvino', 'onnx', 'ultralytics')]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_option_parsing():
    from unideploy.cli.compare import parse_options

    assert parse_options(["precision=f32", "threads=2", "x=0.5", "flag=true"], "--option") == {
        "precision": "f32", "threads": 2, "x": 0.5, "flag": True}
    with pytest.raises(InputError, match="--cand-option expects KEY=VALUE"):
        parse_options(["precision"], "--cand-option")
