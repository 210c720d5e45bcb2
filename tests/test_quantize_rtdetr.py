"""RT-DETR INT8: quantization recipes, accuracy control that meets --max-drop, disjoint calibration and
validation images, and the benchmark_app parser of ``benchmarks/benchmark_app.py``.

A tiny Ultralytics RT-DETR (built with ``RTDETR(yaml)``, random weights, 96 px, 30 queries, one decoder layer)
keeps each quantization to seconds. Its data set is labelled with its own top FP32 detections, so FP32 mAP is
high and any INT8 error shows as a drop.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import unideploy
from conftest import has_module
from unideploy.core.errors import InputError

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
pytest.importorskip("nncf")
pytestmark = pytest.mark.skipif(not has_module("openvino"), reason="openvino not installed")

from unideploy.testing import write_scenes  # noqa: E402
from unideploy.tools.quantize.accuracy_control import RestorerLog, check_disjoint, float_layers  # noqa: E402
from unideploy.tools.quantize.recipes import RECIPES, resolve_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMGSZ = 96
NAMES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
SIZES = [(96, 128), (128, 96), (96, 96), (120, 160)]
TINY_YAML = """\
nc: 6
depth_multiple: 0.33
width_multiple: 0.125
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 1, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 1, C2f, [256, True]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 1, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 1, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]
head:
  - [-1, 1, Conv, [256, 1, 1, None, 1, 1, False]]
  - [-1, 1, AIFI, [64, 2]]
  - [-1, 1, Conv, [256, 1, 1]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [6, 1, Conv, [256, 1, 1, None, 1, 1, False]]
  - [[-2, -1], 1, Concat, [1]]
  - [-1, 1, RepC3, [256]]
  - [-1, 1, Conv, [256, 1, 1]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [4, 1, Conv, [256, 1, 1, None, 1, 1, False]]
  - [[-2, -1], 1, Concat, [1]]
  - [-1, 1, RepC3, [256]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 17], 1, Concat, [1]]
  - [-1, 1, RepC3, [256]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 12], 1, Concat, [1]]
  - [-1, 1, RepC3, [256]]
  - [[21, 24, 27], 1, RTDETRDecoder, [nc, 32, 30, 4, 2, 1, 64]]
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantize_rtdetr")


@pytest.fixture(scope="module")
def tiny_rtdetr(work) -> Path:
    """A random-weight Ultralytics RT-DETR exported to ONNX (Ultralytics metadata: family rtdetr)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import RTDETR

    cfg = work / "tiny-rtdetr.yaml"
    cfg.write_text(TINY_YAML)
    torch.manual_seed(0)
    model = RTDETR(str(cfg))
    model.model.names = dict(enumerate(NAMES))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        path = Path(model.export(format="onnx", imgsz=IMGSZ, simplify=True, verbose=False)).resolve()
    finally:
        os.chdir(cwd)
    return path


@pytest.fixture(scope="module")
def calib_dir(work) -> Path:
    write_scenes(work / "calib", SIZES * 3, seed=5)
    return work / "calib"


@pytest.fixture(scope="module")
def labelled(work, tiny_rtdetr) -> Path:
    """12 images labelled with the 5 highest-scoring FP32 detections of each: an Ultralytics data.yaml."""
    from unideploy.core.sinks import yolo_txt

    root = work / "val"
    (root / "labels").mkdir(parents=True)
    files = write_scenes(root / "images", SIZES * 3, seed=11)
    with unideploy.load(tiny_rtdetr, conf=0.0) as pred:
        for f, det in zip(files, pred(files)):
            top = det[np.argsort(-det.confidence)[:5]]
            (root / "labels" / f"{f.stem}.txt").write_text(yolo_txt(top, with_conf=False))
    (root / "data.yaml").write_text(f"val: images\nnames: {json.dumps(NAMES)}\n")
    return root / "data.yaml"


def test_recipes_resolve_by_family():
    assert resolve_recipe("auto", "rtdetr").name == "rtdetr"
    assert resolve_recipe(None, "yolo").name == "default"
    assert resolve_recipe("SEED", "rtdetr").name == "seed"
    with pytest.raises(InputError, match=r"unknown quantization recipe 'fast'; valid recipes: auto, default, rtdetr"):
        resolve_recipe("fast", "rtdetr")
    assert set(RECIPES.names()) == {"default", "seed", "transformer", "rtdetr", "rtdetr-decoder"}


def _decoder(names):
    return [n for n in names if n.startswith("/model.28/")]


def test_rtdetr_recipes_choose_what_runs_in_float(tiny_rtdetr, calib_dir, work):
    """auto -> rtdetr: backbone and encoder INT8, the whole decoder float; rtdetr-decoder: decoder INT8 except box /
    score heads and deformable-attention offsets / weights; seed: everything INT8. All load and predict."""
    runs = {name: unideploy.quantize(tiny_rtdetr, calib_dir, backend="openvino", samples=8, speed=False,
                                     recipe=name, out=work / name) for name in ("auto", "rtdetr-decoder", "seed")}
    ra, rd, rs = (runs[k].report for k in ("auto", "rtdetr-decoder", "seed"))
    assert ra["recipe"]["name"] == "rtdetr" and ra["recipe"]["model_type"] == "transformer"
    assert rs["recipe"]["name"] == "seed" and rs["float_nodes"] == 0
    import openvino as ov

    heavy = [op.get_friendly_name() for op in ov.Core().read_model(str(runs["auto"].path)).get_ordered_ops()
             if op.get_type_name() in ("MatMul", "Convolution")]
    assert set(_decoder(heavy)) <= set(ra["float_layers"]), "rtdetr: every decoder layer runs in float"
    assert any(n.startswith("/model.4/") for n in heavy) and not any(n.startswith("/model.4/") for n in ra["float_layers"])
    floats = "\n".join(rd["float_layers"])
    for part in ("sampling_offsets", "attention_weights", "dec_bbox_head", "enc_bbox_head", "enc_score_head"):
        assert part in floats, f"{part} should run in float under rtdetr-decoder"
    assert any("value_proj" in n for n in heavy) and not any("value_proj" in n for n in rd["float_layers"])
    assert not any("sampling_offsets" in n for n in rs["float_layers"])
    assert ra["int8_ops"] < rd["int8_ops"] < rs["int8_ops"]
    saved = json.loads(runs["auto"].path.with_name(runs["auto"].path.stem + ".quantize.json").read_text())
    assert saved["recipe"]["name"] == "rtdetr"
    for r in runs.values():
        with unideploy.load(r.path, conf=0.0) as pred:
            det = pred(sorted(calib_dir.glob("*"))[0])
        assert len(det) > 0 and det.names == dict(enumerate(NAMES))


@pytest.fixture(scope="module")
def tiny_yolo(work) -> tuple[Path, Path]:
    """The tiny YOLO-layout detector of ``test_quantize.py`` (accuracy control on the random-weight RT-DETR takes
    minutes: its INT8 top-k query selection collapses) and 16 images labelled with its confident detections."""
    from export_helpers import SPEC, TinyDetector
    from unideploy.core.sinks import yolo_txt

    torch.manual_seed(0)
    model = unideploy.export(TinyDetector().eval(), torch.zeros(1, 3, 128, 128), out=work / "tiny_yolo.onnx", spec=SPEC)
    root = work / "yolo_val"
    (root / "labels").mkdir(parents=True)
    files = write_scenes(root / "images", [(480, 640), (640, 480), (360, 360), (400, 600)] * 4, seed=11)
    with unideploy.load(model, conf=0.5) as pred:
        for f, det in zip(files, pred(files)):
            (root / "labels" / f"{f.stem}.txt").write_text(yolo_txt(det[:8], with_conf=False))
    (root / "data.yaml").write_text(f"val: images\nnames: {json.dumps(SPEC['names'])}\n")
    return model, root / "data.yaml"


def test_accuracy_control_meets_max_drop_and_reports_float_layers(tiny_yolo, calib_dir, work):
    model, data = tiny_yolo
    plain = unideploy.quantize(model, calib_dir, backend="openvino", samples=12, data=data, speed=False,
                               out=work / "plain")
    rp = plain.report
    max_drop = 0.005
    assert rp["fp32"]["mAP50-95"] > 0.5 and "accuracy_control" not in rp
    assert rp["accuracy_drop"]["mAP50-95"] > max_drop, "precondition: plain INT8 must lose more than the limit"
    ctl = unideploy.quantize(model, calib_dir, backend="openvino", samples=12, data=data, max_drop=max_drop,
                             speed=False, out=work / "controlled")
    rc = ctl.report
    assert rc["gate"]["result"] == "passed" and rc["accuracy_drop"]["mAP50-95"] <= max_drop
    ac = rc["accuracy_control"]
    assert ac["reached_drop"] is True and ac["reverted_to_float"]
    assert ac["quantized_ops_before"] >= len(ac["reverted_to_float"])
    assert abs(ac["initial_drop"] - rp["accuracy_drop"]["mAP50-95"]) < 1e-6, "NNCF measured the plain model's drop"
    assert rc["int8_ops"] < rp["int8_ops"] and len(rc["float_layers"]) > len(rp["float_layers"])
    reverted_layers = set(rc["float_layers"]) - set(rp["float_layers"])
    assert reverted_layers and reverted_layers <= set(ac["reverted_to_float"])


def test_calibration_and_validation_must_be_disjoint(tiny_rtdetr, labelled, work):
    """Accuracy control refuses calibration images that are validation images, by content (renamed copies too)."""
    val_images = labelled.parent / "images"
    with pytest.raises(InputError, match=r"--calib and --data share 12 of 12 calibration images .* disjoint"):
        unideploy.quantize(tiny_rtdetr, val_images, backend="openvino", samples=12, data=labelled, max_drop=0.01,
                           speed=False, out=work / "overlap")
    mixed = work / "mixed_calib"
    write_scenes(mixed, SIZES, seed=21)
    shutil.copyfile(sorted(val_images.glob("*"))[3], mixed / "renamed_copy.jpg")
    with pytest.raises(InputError, match=r"share 1 of 5 calibration images \(first: .*renamed_copy.jpg = "):
        check_disjoint(sorted(mixed.glob("*")), sorted(val_images.glob("*")))
    check_disjoint(sorted(mixed.glob("*"))[:4], sorted(val_images.glob("*")))  # disjoint: no error
    assert not (work / "overlap").exists()


def test_restorer_log_reads_nncf_report():
    log = logging.getLogger("nncf")
    with RestorerLog() as r:
        log.info("Accuracy drop: 0.0312 (DropType.ABSOLUTE)")
        log.info("Total number of quantized operations in the model: 42")
        log.info("Accuracy drop with the new quantization scope is 0.02 (DropType.ABSOLUTE)")
        log.info("2 out of 42 were reverted back to the floating-point precision:\n\t/a/MatMul\n\t/b/Conv")
    assert r.as_dict() == {"reverted_to_float": ["/a/MatMul", "/b/Conv"], "quantized_ops_before": 42,
                           "reached_drop": True, "initial_drop": 0.0312}
    with RestorerLog() as r2:
        log.info("The algorithm could not achieve the required accuracy drop.")
        log.info("1 out of 3 were reverted back to the floating-point precision:\n\t/c/Conv")
    assert r2.reached is False and r2.reverted == ["/c/Conv"]
    with RestorerLog(enabled=False) as r3:
        log.info("Total number of quantized operations in the model: 5")
    assert r3.quantized_ops is None


def test_float_layers_of_onnx_qdq():
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["y1"], name="int8_matmul"),
             helper.make_node("MatMul", ["y1", "w"], ["y"], name="float_matmul")]
    inits = [w, helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.UINT8, [], [0])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    assert float_layers(onnx.helper.make_model(g)) == ["float_matmul"]


# ------------------------------------------------------------------------------ benchmark_app parser

RECORDED = """\
[Step 8/11] Querying optimal runtime parameters
[ INFO ] Model:
[ INFO ]   NUM_STREAMS: 2
[ INFO ]   INFERENCE_PRECISION_HINT: <Type: 'bfloat16'>
[ INFO ]   PERFORMANCE_HINT: THROUGHPUT
[Step 10/11] Measuring performance (Start inference asynchronously, 2 inference requests, limits: 5000 ms duration)
[ INFO ] First inference took 27.73 ms
[Step 11/11] Dumping statistics report
[ INFO ] Count:            494 iterations
[ INFO ] Duration:         5063.79 ms
[ INFO ] Latency:
[ INFO ]    Median:        15.25 ms
[ INFO ]    Average:       19.64 ms
[ INFO ]    Min:           5.11 ms
[ INFO ]    Max:           75.87 ms
[ INFO ] Throughput:   97.56 FPS
"""


def _benchmark_app_module():
    spec = importlib.util.spec_from_file_location("benchmark_app_script", REPO / "benchmarks" / "benchmark_app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_app_parser_on_recorded_output():
    mod = _benchmark_app_module()
    r = mod.parse_benchmark_app(RECORDED)
    assert r == {"throughput_fps": 97.56, "count": 494, "duration_ms": 5063.79, "median_ms": 15.25,
                 "average_ms": 19.64, "min_ms": 5.11, "max_ms": 75.87, "requests": 2, "streams": 2,
                 "precision": "bfloat16"}
    sync = RECORDED.replace("asynchronously, 2 inference requests", "synchronously").replace("bfloat16", "f32")
    assert mod.parse_benchmark_app(sync)["precision"] == "f32" and "requests" not in mod.parse_benchmark_app(sync)
    with pytest.raises(ValueError, match="benchmark_app reported no throughput; last line: .*Cannot read model"):
        mod.parse_benchmark_app("[Step 4/11] Reading model files\n[ ERROR ] Cannot read model foo.xml\n")


# ------------------------------------------------------------- accuracy control with the transformer model type

def _revert_everything(model, calib, advanced):
    """Quantize ``model`` (NNCF transformer type, weights not compressed, as accuracy control does) and revert every
    quantizer group with NNCF's own restorer function, one group at a time: what accuracy control does when no
    revert is enough. Returns (quantized model, fully reverted model)."""
    import nncf
    from nncf.common.factory import build_graph
    from nncf.common.quantization.quantizer_removal import revert_operations_to_floating_point_precision
    from nncf.common.utils.backend import get_backend
    from nncf.openvino.quantization.backend_parameters import BackendParameters
    from nncf.quantization.advanced_parameters import RestoreMode
    from nncf.quantization.algorithms.accuracy_control.algorithm import QuantizationAccuracyRestorer, get_algo_backend
    from nncf.quantization.algorithms.accuracy_control.ranker import Ranker

    advanced.backend_params[BackendParameters.COMPRESS_WEIGHTS] = False
    q = nncf.quantize(model.clone(), calib.nncf_dataset(False), preset=nncf.QuantizationPreset.MIXED,
                      subset_size=len(calib), model_type=nncf.ModelType.TRANSFORMER, advanced_parameters=advanced)
    backend = get_algo_backend(get_backend(q))
    qg = build_graph(q)
    QuantizationAccuracyRestorer._collect_original_biases_and_weights(build_graph(model), qg, model, backend)
    groups = Ranker(1, None, backend, None, 1).find_groups_of_quantizers_to_rank(qg)
    reverted = revert_operations_to_floating_point_precision(  # all groups in one call: the restorer's end state
        [op for g in groups for op in g.operations], [fq for g in groups for fq in g.quantizers], q, qg,
        RestoreMode.ACTIVATIONS_AND_WEIGHTS, backend.get_op_with_weights_metatypes(), backend.is_node_with_weight,
        backend.get_weight_tensor_port_ids)
    return q, reverted


def test_accuracy_control_with_transformer_type_can_revert_to_the_float_model(tiny_rtdetr, calib_dir):
    """With SmoothQuant (NNCF's default for the transformer type) a model with every quantizer reverted is NOT the
    float model (the activation scales stay while the weights are restored); with the parameters accuracy control
    now uses (SmoothQuant off) it is."""
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    from unideploy.tools.quantize.calibration import CalibrationSet
    from unideploy.tools.quantize.methods import no_smooth_quant

    core = ov.Core()
    model = ov.convert_model(str(tiny_rtdetr))
    with unideploy.load(tiny_rtdetr, "openvino", precision="f32", in_model_preprocess=False) as fp:
        calib = CalibrationSet(calib_dir, fp, 4)
        xs = [fp.preprocess(np.asarray(__import__("cv2").imread(str(p))))[0][None] for p in sorted(calib_dir.glob("*"))[:2]]

    def max_diff(m):
        a = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        b = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return max(float(np.abs(a(x)[i] - b(x)[i]).max()) for x in xs for i in range(len(a.outputs)))

    def fq(m):
        return sum(op.get_type_name() == "FakeQuantize" for op in m.get_ordered_ops())

    q_off, reverted_off = _revert_everything(model, calib, no_smooth_quant())
    assert fq(q_off) > 0 and fq(reverted_off) == 0
    assert max_diff(reverted_off) < 1e-4, "SmoothQuant off: reverting every quantizer gives back the float model"
    q_sq, reverted_sq = _revert_everything(model, calib, AdvancedQuantizationParameters())
    assert fq(reverted_sq) == 0
    assert max_diff(reverted_sq) > 100 * max(max_diff(reverted_off), 1e-6), \
        "precondition: with SmoothQuant the fully reverted model differs from the float model"


def test_accuracy_control_turns_smooth_quant_off_for_transformers(monkeypatch):
    """``quantize(max_drop=...)`` with a transformer-type recipe hands NNCF's accuracy control SmoothQuant-free
    parameters; plain quantization keeps NNCF's defaults."""
    import nncf

    from unideploy.tools.quantize import methods

    seen = {}
    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", lambda *a, **kw: seen.setdefault("ac", kw))
    monkeypatch.setattr(nncf, "quantize", lambda *a, **kw: seen.setdefault("plain", kw))

    class Calib(list):
        def nncf_dataset(self, as_dict):
            return None

    class Gate:
        dataset = type("D", (), {"samples": [1, 2, 3]})()
        validation_fn = None

        def nncf_dataset(self):
            return None

    for model_type in ("transformer", None):
        seen.clear()
        methods._nncf_run(nncf, object(), Calib([1]), as_dict=False, preset="mixed", ignored=[], gate=Gate(),
                          max_drop=0.01, ranking_subset=2, model_type=model_type)
        adv = seen["ac"].get("advanced_quantization_parameters")
        if model_type:
            assert adv.smooth_quant_alphas.matmul < 0 and adv.smooth_quant_alphas.convolution < 0
        else:
            assert adv is None
    seen.clear()
    methods._nncf_run(nncf, object(), Calib([1]), as_dict=False, preset="mixed", ignored=[], gate=None, max_drop=None,
                      ranking_subset=None, model_type="transformer")
    assert "advanced_parameters" not in seen["plain"] and "advanced_quantization_parameters" not in seen["plain"]
