"""unideploy quantize: INT8 models that load and predict, calibration through predict's preprocessing,
the accuracy gate, the report, and bad inputs.

A tiny torch detector (YOLO output layout) keeps each quantization to seconds. Its data set is labelled
with its own confident FP32 predictions, so FP32 mAP is high and any INT8 error shows as a drop.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import unideploy
from conftest import has_module

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("nncf")

from export_helpers import SPEC, TinyDetector  # noqa: E402
from unideploy.tools.quantize import AccuracyDropError, CalibrationSet  # noqa: E402
from unideploy.core.sinks import yolo_txt  # noqa: E402
from unideploy.testing import write_scenes  # noqa: E402

needs_openvino = pytest.mark.skipif(not has_module("openvino"), reason="openvino not installed")
SIZES = [(480, 640), (640, 480), (360, 360), (400, 600)]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="module")
def tiny_onnx(work) -> Path:
    torch.manual_seed(0)
    return unideploy.export(TinyDetector().eval(), torch.zeros(1, 3, 128, 128), out=work / "tiny.onnx", spec=SPEC)


@pytest.fixture(scope="module")
def calib_dir(work) -> Path:
    write_scenes(work / "calib", SIZES * 4, seed=5)
    return work / "calib"


@pytest.fixture(scope="module")
def labelled(work, tiny_onnx) -> Path:
    """16 images labelled with the 8 most confident FP32 detections (conf > 0.5) of each: an Ultralytics data.yaml."""
    root = work / "val"
    (root / "labels").mkdir(parents=True)
    files = write_scenes(root / "images", SIZES * 4, seed=11)
    with unideploy.load(tiny_onnx, conf=0.5) as pred:
        for f, det in zip(files, pred(files)):
            (root / "labels" / f"{f.stem}.txt").write_text(yolo_txt(det[:8], with_conf=False))
    (root / "data.yaml").write_text(f"val: images\nnames: {json.dumps(SPEC['names'])}\n")
    return root / "data.yaml"


def _predicts(path: Path, image: Path) -> None:
    with unideploy.load(path, conf=0.1) as pred:
        det = pred(image)
    assert det.names == SPEC["names"] and det.image_shape is not None


# --------------------------------------------------------------------------------- models that work

@needs_openvino
def test_openvino_int8_loads_and_predicts(tiny_onnx, calib_dir, work):
    r = unideploy.quantize(tiny_onnx, calib_dir, backend="openvino", samples=16, speed=False)
    assert r.path == work / "tiny_int8_openvino_model" / "tiny_int8.xml"
    ops = [op.get_type_name() for op in __import__("openvino").Core().read_model(str(r.path)).get_ordered_ops()]
    assert ops.count("FakeQuantize") == r.report["int8_ops"] > 0
    spec = unideploy.read_spec(r.path)
    assert spec.names == SPEC["names"] and spec.imgsz == (128, 128) and spec.extra["precision"] == "int8"
    assert spec.extra["quantization"]["method"] == "nncf" and spec.extra["quantization"]["calibration_images"] == 16
    _predicts(r.path, next(calib_dir.iterdir()))
    saved = json.loads(r.report_path.read_text())
    assert saved["int8"]["model"] == str(r.path) and saved["calibration"]["images"] == 16
    assert r.report["fp32"]["size_mb"] > 0 and "mAP50-95" not in r.report["int8"]  # no --data: no accuracy figures


def test_onnxruntime_qoperator_u8s8(tiny_onnx, calib_dir, work):
    r = unideploy.quantize(tiny_onnx, calib_dir, backend="onnxruntime", samples=8, speed=False, out=work / "ort")
    assert r.path == work / "ort" / "tiny_int8.onnx"
    m = onnx.load(str(r.path))
    kinds = {n.op_type for n in m.graph.node}
    assert "QLinearConv" in kinds and "QuantizeLinear" in kinds  # QOperator format
    conv_w = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert conv_w, "weights should be int8 (s8)"
    zero_points = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    assert zero_points, "activations should be uint8 (u8)"
    assert r.report["calibration"]["images"] == 8
    # the decoding tail after the last conv stays float: the output is not quantized
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT and r.report["float_nodes"] > 0
    assert unideploy.read_spec(r.path).extra["quantization"]["method"] == "ort"
    _predicts(r.path, next(calib_dir.iterdir()))


def test_nncf_onnx_qdq(tiny_onnx, calib_dir, work):
    r = unideploy.quantize(tiny_onnx, calib_dir, backend="onnxruntime", method="nncf", samples=8, speed=False,
                           out=work / "qdq.onnx")
    kinds = [n.op_type for n in onnx.load(str(r.path)).graph.node]
    assert kinds.count("QuantizeLinear") > 0 and kinds.count("DequantizeLinear") > 0
    _predicts(r.path, next(calib_dir.iterdir()))


def test_calibration_tensors_are_predict_preprocessing(tiny_onnx, calib_dir, work):
    """Same tensors as Predictor.preprocess, for a spec with BGR order and mean/std (not the /255 default)."""
    spec = {**SPEC, "channel_order": "bgr", "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3), "resize": "stretch"}
    m = unideploy.export(tiny_onnx, out=work / "norm.onnx", spec=spec)
    from unideploy.core.sources import read_image

    with unideploy.load(m) as pred:
        calib = CalibrationSet(calib_dir, pred, samples=5)
        assert len(calib) == 5 and calib.paths[0] == sorted(calib_dir.iterdir())[0]
        for i, path in enumerate(calib.paths):
            x = calib.tensor(i)
            assert x.shape == (1, 3, 128, 128) and x.dtype == np.float32
            np.testing.assert_array_equal(x[0], pred.preprocess(read_image(path))[0])
        raw = read_image(calib.paths[0])
        assert abs(float(x.mean()) - float(raw.mean()) / 255) > 0.1  # normalisation really applied


# ------------------------------------------------------------------------------------ accuracy gate

@needs_openvino
def test_accuracy_gate_is_honoured(tiny_onnx, calib_dir, labelled, work):
    plain = unideploy.quantize(tiny_onnx, calib_dir, backend="openvino", samples=16, data=labelled, speed=False,
                               out=work / "plain")
    rp = plain.report
    assert rp["fp32"]["mAP50-95"] > 0.5 and rp["fp32"]["eval_images"] == 16
    max_drop = 0.005
    assert rp["accuracy_drop"]["mAP50-95"] > max_drop, "precondition: plain INT8 must lose more than the gate allows"

    gated = unideploy.quantize(tiny_onnx, calib_dir, backend="openvino", samples=16, data=labelled, max_drop=max_drop,
                               speed=False, out=work / "gated")
    rg = gated.report
    assert rg["gate"] == {"max_drop": max_drop, "metric": "mAP50-95", "result": "passed"}
    assert rg["accuracy_drop"]["mAP50-95"] <= max_drop
    assert rg["int8_ops"] < rp["int8_ops"], "accuracy control should have put quantized layers back in float"
    assert abs(rg["fp32"]["mAP50-95"] - rp["fp32"]["mAP50-95"]) < 1e-9
    # the gated model, evaluated on its own through the public eval, shows the same accuracy
    from unideploy.tools.evaluate import evaluate

    again = evaluate(gated.path, labelled, precision="f32")
    assert abs(again["mAP50-95"] - rg["int8"]["mAP50-95"]) < 1e-6


def test_onnxruntime_gate_refuses_a_model_that_drops_too_much(tiny_onnx, calib_dir, labelled, work):
    """Quantizing the decoding tail too (boxes in pixels and scores share one uint8 scale) ruins accuracy: the
    ONNX Runtime path, which cannot restore layers, refuses to keep that model."""
    out = work / "refused" / "m.onnx"
    with pytest.raises(AccuracyDropError) as e:
        unideploy.quantize(tiny_onnx, calib_dir, backend="onnxruntime", samples=16, data=labelled, max_drop=0.01,
                           keep_head_float=False, speed=False, out=out)
    msg = str(e.value)
    assert "more than --max-drop 0.01 allows; no model was kept" in msg and "--method nncf" in msg
    assert not out.exists()
    report = json.loads((out.parent / "m.quantize.json").read_text())
    assert report["gate"]["result"] == "failed"


def test_report_with_speed(tiny_onnx, calib_dir, labelled, work):
    r = unideploy.quantize(tiny_onnx, calib_dir, backend="onnxruntime", samples=4, data=labelled, speed_runs=3,
                           out=work / "speed")
    for key in ("fp32", "int8"):
        assert r.report[key]["ms_per_image"] > 0 and r.report[key]["images_per_s"] > 0
        assert 0 <= r.report[key]["mAP50-95"] <= 1
    assert set(r.report["speedup"]) == {"latency", "throughput", "vs"}
    assert r.report["fp32_f32"] is None, "ONNX Runtime's CPU default is f32: no second FP32 figure"
    text = r.report["summary"]
    for row in ("size (MB)", "mAP50-95", "mAP50", "ms/image", "images/s"):
        assert row in text
    assert r.report["recommendation"]["text"] in text


@needs_openvino
def test_openvino_speed_against_default_and_true_fp32(tiny_onnx, calib_dir, work):
    """The float model is timed at the runtime's default precision and, where that is not f32 (bf16 CPUs), at
    true f32 too; both ratios and a verdict are in the report and its table."""
    r = unideploy.quantize(tiny_onnx, calib_dir, backend="openvino", samples=4, speed_runs=3, out=work / "ov_speed")
    rep = r.report
    default = rep["fp32"]["precision"]
    assert default in ("f32", "bf16", "f16") and rep["int8"]["images_per_s"] > 0
    assert rep["speedup"]["vs"] == default
    if default == "f32":
        assert rep["fp32_f32"] is None and "throughput_vs_f32" not in rep["speedup"]
    else:
        assert rep["fp32_f32"]["precision"] == "f32" and rep["fp32_f32"]["images_per_s"] > 0
        assert rep["speedup"]["throughput_vs_f32"] == pytest.approx(rep["int8"]["images_per_s"] / rep["fp32_f32"]["images_per_s"])
        assert "(FP32 at f32)" in rep["summary"] and f"(FP32 at {default})" in rep["summary"]
    assert rep["recommendation"]["faster"] in ("int8", "fp32", "same")
    assert rep["summary"].splitlines()[-1] == rep["recommendation"]["text"]


@pytest.mark.parametrize("ratio, faster, words", [
    (0.83, "fp32", "INT8 is SLOWER than the default precision; for speed use the float model m.xml at its default bf16"),
    (1.01, "same", "about the same speed"),
    (1.40, "int8", "use the INT8 model m_int8.xml"),
])
def test_recommendation_names_the_faster_artefact(ratio, faster, words):
    from unideploy.tools.quantize.report import recommend

    rec = recommend({"speedup": {"throughput": ratio, "vs": "bf16", "throughput_vs_f32": 4.0}}, "d/m.xml", "d/m_int8.xml")
    assert rec["faster"] == faster and words in rec["text"]
    assert rec["text"].startswith(f"INT8 is {ratio:.2f}x the throughput of the FP32 model at bf16 (the runtime default) "
                                  "and 4.00x true FP32 (f32)")
    assert rec["model"] == ("d/m.xml" if faster == "fp32" else "d/m_int8.xml")


def test_compare_speed_times_true_fp32_only_when_the_default_differs(monkeypatch):
    from unideploy.tools.quantize import report

    calls = []

    def fake(model, backend, *, device=None, runs=50, **opts):
        calls.append((model, opts.get("precision")))
        default = "bf16" if backend == "openvino" else None
        ips = {("fp", None): 100.0, ("q", None): 80.0, ("fp", "f32"): 20.0}[(model, opts.get("precision"))]
        return {"ms_per_image": 1000 / ips, "images_per_s": ips, "precision": opts.get("precision") or default}

    monkeypatch.setattr(report, "measure_speed", fake)
    r = report.compare_speed("fp", "q", "openvino", runs=3)
    assert calls == [("fp", None), ("q", None), ("fp", "f32")]
    assert r["speedup"]["throughput"] == pytest.approx(0.8) and r["speedup"]["throughput_vs_f32"] == pytest.approx(4.0)
    assert r["recommendation"]["faster"] == "fp32" and "SLOWER" in r["recommendation"]["text"]
    calls.clear()
    r = report.compare_speed("fp", "q", "onnxruntime", runs=3)
    assert calls == [("fp", None), ("q", None)] and r["fp32_f32"] is None


# ------------------------------------------------------------------------------- Ultralytics model

@needs_openvino
@pytest.mark.slow
def test_ultralytics_head_stays_float(yolo_models, image_dir, work):
    r = unideploy.quantize(yolo_models["yolov8n"]["onnx"], image_dir, backend="openvino", samples=16, speed=False,
                           out=work / "v8")
    kept = r.report["float_node_names"]
    assert kept and all(n.startswith("/model.22/") for n in kept)
    assert any("/dfl/" in n for n in kept) and not any("/cv2." in n or "/cv3." in n for n in kept)
    with unideploy.load(r.path, conf=0.25) as pred:
        dets = pred(sorted(image_dir.iterdir())[:4])
    assert sum(len(d) for d in dets) > 0


# ------------------------------------------------------------------------------------- bad inputs

def test_corrupt_calibration_images_are_skipped_and_reported(tiny_onnx, calib_dir, work, capsys):
    d = work / "calib_bad"
    shutil.copytree(calib_dir, d)
    (d / "zz_empty.jpg").write_bytes(b"")
    (d / "zz_text.png").write_bytes(b"this is not a png")
    good = next(d.glob("*.jpg")).read_bytes()
    (d / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    r = unideploy.quantize(tiny_onnx, d, backend="onnxruntime", samples=100, speed=False, out=work / "bad_calib")
    skipped = r.report["calibration"]["skipped"]
    assert r.report["calibration"]["images"] == 16 and len(skipped) == 3
    assert any(s.startswith("zz_truncated.jpg:") and "truncated" in s for s in skipped)

    from unideploy.cli.main import main

    assert main(["quantize", str(tiny_onnx), "--calib", str(d), "--backend", "onnxruntime", "--samples", "100",
                 "--no-speed", "--out", str(work / "bad_calib_cli")]) == 0
    cap = capsys.readouterr()
    assert cap.err.count("skipped calibration image zz_") == 3 and "saved " in cap.out and "size (MB)" in cap.out


def test_calibration_folder_errors(tiny_onnx, work):
    empty = work / "empty"
    empty.mkdir()
    with pytest.raises(unideploy.InputError, match="expected a folder of images"):
        unideploy.quantize(tiny_onnx, empty, backend="onnxruntime", speed=False)
    broken = work / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"b{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(unideploy.InputError, match="none of the 3 calibration images could be decoded"):
        unideploy.quantize(tiny_onnx, broken, backend="onnxruntime", speed=False)


BAD = [
    (dict(preset="fast"), "unknown preset 'fast'; valid presets: mixed, performance"),
    (dict(backend="tensorrt"), "unknown quantization backend 'tensorrt'; valid backends: onnxruntime, openvino"),
    (dict(backend="openvino", method="ort"), "method 'ort' does not produce models for openvino; openvino takes: nncf"),
    (dict(method="magic"), "unknown quantization method 'magic'; valid methods: nncf, ort"),
    (dict(max_drop=0.01), "--max-drop needs --data"),
    (dict(max_drop=5, data="x.yaml"), "--max-drop is an absolute mAP50-95 drop between 0 and 1"),
    (dict(samples=0), "--samples must be a positive integer, got 0"),
    (dict(ignore=["(unclosed"]), "--ignore expects a regular expression"),
]


@pytest.mark.parametrize("given,backend,method", [("ov", "openvino", "nncf"), ("ORT", "onnxruntime", "ort"),
                                                  ("onnx", "onnxruntime", "ort"), ("openvino", "openvino", "nncf")])
def test_backend_aliases_come_from_the_backend_registry(given, backend, method):
    from unideploy.tools.quantize import _backend_and_method
    from unideploy.tools.quantize.methods import METHODS

    assert _backend_and_method(given, None) == (backend, method)
    assert METHODS.names() == ["nncf", "ort"]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[b[1][:32] for b in BAD])
def test_bad_options(tiny_onnx, calib_dir, kwargs, message):
    with pytest.raises(unideploy.InputError) as e:
        unideploy.quantize(tiny_onnx, calib_dir, **kwargs)
    assert message in str(e.value)


def test_bad_models(tiny_onnx, calib_dir, work):
    with pytest.raises(unideploy.ModelError, match="model file not found"):
        unideploy.quantize(work / "missing.onnx", calib_dir)
    (work / "w.pt").write_bytes(b"x")
    with pytest.raises(unideploy.InputError, match=r"quantize reads ONNX \(.onnx\) or OpenVINO IR \(.xml\).*unideploy export w.pt"):
        unideploy.quantize(work / "w.pt", calib_dir)
    xml = work / "m.xml"
    xml.write_text("<net/>")
    with pytest.raises(unideploy.InputError, match="the onnxruntime backend quantizes ONNX models"):
        unideploy.quantize(xml, calib_dir, backend="onnxruntime")
    with pytest.raises(unideploy.InputError, match="is the input model"):
        unideploy.quantize(tiny_onnx, calib_dir, backend="onnxruntime", out=tiny_onnx)


@pytest.mark.parametrize("module,backend,extra", [("nncf", "openvino", "quantize"), ("openvino", "openvino", "quantize"),
                                                  ("nncf", "onnxruntime", "quantize")])
def test_missing_tools_name_the_extra(tiny_onnx, calib_dir, monkeypatch, module, backend, extra):
    method = "nncf"
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(unideploy.BackendUnavailableError) as e:
        unideploy.quantize(tiny_onnx, calib_dir, backend=backend, method=method)
    assert f"'{module}'" in str(e.value) and f"pip install 'unideploy[{extra}]'" in str(e.value)


def test_cli_errors_are_one_line(tiny_onnx, calib_dir, capsys):
    from unideploy.cli.main import main

    assert main(["quantize", str(tiny_onnx), "--calib", str(calib_dir), "--preset", "turbo"]) == 1
    assert capsys.readouterr().err.strip() == "error: unknown preset 'turbo'; valid presets: mixed, performance"
    assert main(["quantize", str(tiny_onnx), "--calib", str(calib_dir), "--max-drop", "0.01"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-drop needs --data" in err[0]
