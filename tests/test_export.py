"""unideploy export: Ultralytics .pt -> ONNX / OpenVINO parity with the PyTorch model, spec round trip,
FP16, generic torch.nn.Module export, and the graph passes (outputs unchanged to 1e-5)."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import unideploy
from conftest import PY, has_module
from parity import assert_same_detections

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export_helpers import SPEC, TinyDetector  # noqa: E402  (needs torch)

needs_openvino = pytest.mark.skipif(not has_module("openvino"), reason="openvino not installed")
#: ops a static-shape graph should no longer contain after the static_grid pass
DYNAMIC_OPS = {"Shape", "Size", "Range", "ConstantOfShape", "Expand", "Tile", "Identity", "Cast", "Gather"}


def ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


# ------------------------------------------------------------------------------------ Ultralytics

@pytest.fixture(scope="module")
def yolo_pt(tmp_path_factory) -> Path:
    """YOLOv8n from its yaml with randomised weights, saved as a checkpoint.

    A class bias of 2 (not conftest's 8) keeps scores below saturation: at 8 several boxes score exactly
    1.0 in float32, and which of those NMS keeps then depends on 1e-7 differences between runtimes.
    """
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    from unideploy.testing import randomise

    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml")
    randomise(model.model, 320, bias=2.0)
    path = tmp_path_factory.mktemp("export") / "det.pt"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def exported(yolo_pt) -> dict[str, Path]:
    """The checkpoint exported to ONNX through the API and to OpenVINO through the CLI."""
    out = {"onnx": unideploy.export(yolo_pt, to="onnx", imgsz=320)}
    if has_module("openvino"):
        r = subprocess.run([PY, "-m", "unideploy", "export", str(yolo_pt), "--to", "openvino", "--imgsz", "320", "--quiet"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        out["openvino"] = Path(r.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.slow
def test_default_output_paths(yolo_pt, exported):
    assert exported["onnx"] == yolo_pt.with_suffix(".onnx")
    if "openvino" in exported:
        assert exported["openvino"] == yolo_pt.parent / "det_openvino_model" / "det.xml"
        assert (exported["openvino"].parent / "metadata.yaml").is_file()  # Ultralytics can load the IR too
    assert not (yolo_pt.parent / "det.pt.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_predict_parity_with_pytorch(yolo_pt, exported, image_dir, fmt):
    """ONNX Runtime and OpenVINO (f32) on the exported files vs Ultralytics predict on the .pt: every box matched,
    corners within 1 px of the model input (scaled to the image: a 1920 px image at 320 allows 6 px)."""
    if fmt not in exported:
        pytest.skip("openvino not installed")
    from ultralytics import YOLO

    files = sorted(image_dir.iterdir())
    options = {"precision": "f32"} if fmt == "openvino" else {}  # this CPU would otherwise run float layers in bf16
    with unideploy.load(exported[fmt], conf=0.001, iou=0.7, **options) as pred:
        ours = pred(files)
    ref = YOLO(str(yolo_pt))
    total = 0
    for f, det in zip(files, ours):
        r = ref.predict(str(f), imgsz=320, conf=0.001, iou=0.7, rect=False, verbose=False)[0]
        b = r.boxes
        px = max(1.0, max(r.orig_shape) / 320)
        assert_same_detections(det, b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy(), px=px, score_tol=1e-3,
                               where=f"{fmt}/{f.name}")
        total += len(det)
    assert total > 20 * len(files), "too few boxes for the comparison to exercise NMS"


@pytest.mark.slow
def test_spec_round_trip(yolo_pt, exported):
    """read_spec on the artefacts gives names, input size, task and family without any flag."""
    from ultralytics import YOLO

    names = {int(k): v for k, v in YOLO(str(yolo_pt)).names.items()}
    for fmt, path in exported.items():
        spec = unideploy.read_spec(path)
        assert spec.names == names, fmt
        assert (spec.imgsz, spec.task, spec.family, spec.batch) == ((320, 320), "detect", "yolo", 1), fmt
        assert spec.extra["precision"] == "fp32" and spec.extra["source"] == "det.pt", fmt
        with unideploy.load(path) as pred:
            assert pred.spec.imgsz == (320, 320) and pred.names == names and pred.adapter.name == "yolo"
    meta = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    assert json.loads(meta["unideploy"])["names"]["0"] == names[0]
    assert meta["author"] == "Ultralytics"  # Ultralytics' own metadata is kept beside ours


@needs_openvino
@pytest.mark.slow
def test_onnx_to_openvino_keeps_one_spec_and_odd_names(exported, tmp_path):
    """Converting an ONNX that already carries a spec: the IR has exactly one, and names survive XML escaping."""
    names = {0: 'quote " and <tag> & amp', 1: "naïve ünïcode", 2: "space name"}
    names.update({i: f"c{i}" for i in range(3, 80)})
    xml = unideploy.export(exported["onnx"], to="openvino", out=tmp_path / "ir", spec={"names": names})
    assert xml == tmp_path / "ir" / "det.xml"
    text = xml.read_text()
    assert text.count("<unideploy ") == 1
    spec = unideploy.read_spec(xml)
    assert spec.names == names and spec.imgsz == (320, 320)


@pytest.mark.slow
def test_half_precision(yolo_pt, exported, image_dir, tmp_path):
    p = unideploy.export(yolo_pt, to="onnx", imgsz=320, half=True, out=tmp_path / "half.onnx")
    m = onnx.load(str(p))
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer) > 50
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # inputs stay float32
    assert unideploy.read_spec(p).extra["precision"] == "fp16"
    with unideploy.load(p, conf=0.001) as pred:
        dets = pred(sorted(image_dir.iterdir())[:3])
    assert all(len(d) for d in dets)
    if "openvino" in exported:
        xml = unideploy.export(exported["onnx"], to="openvino", half=True, out=tmp_path / "ov16")
        full = exported["openvino"].with_suffix(".bin").stat().st_size
        assert xml.with_suffix(".bin").stat().st_size < 0.6 * full
        assert unideploy.read_spec(xml).extra["precision"] == "fp16"


@pytest.mark.slow
def test_static_grid_on_dynamic_ultralytics_export(yolo_pt, tmp_path):
    """A dynamic, unsimplified export computes its anchor grid with Shape/Range/Expand; the pass folds them."""
    from unideploy.tools.convert.passes import apply_onnx_passes

    dyn = unideploy.export(yolo_pt, to="onnx", imgsz=320, dynamic=True, simplify=False, out=tmp_path / "dyn.onnx")
    assert unideploy.read_spec(dyn).batch is None
    before = ops(dyn)
    assert before["Range"] and before["Shape"]
    fixed = tmp_path / "fixed.onnx"
    fixed.write_bytes(dyn.read_bytes())
    assert apply_onnx_passes(fixed, ["static_grid"], imgsz=(320, 320), batch=1) == ["static_grid"]
    after = ops(fixed)
    assert not DYNAMIC_OPS & set(after), after
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    a = ort.InferenceSession(str(dyn)).run(None, {"images": x})[0]
    b = ort.InferenceSession(str(fixed)).run(None, {"images": x})[0]
    assert a.shape == b.shape == (1, 84, 2100)
    assert np.abs(a - b).max() <= 1e-5

    # the same through export(): passes recorded in the spec
    p = unideploy.export(yolo_pt, to="onnx", imgsz=320, simplify=False, passes="silu,static_grid", out=tmp_path / "p.onnx")
    assert unideploy.read_spec(p).extra["passes"] == ["silu", "static_grid"]
    assert not DYNAMIC_OPS & set(ops(p))
    c = ort.InferenceSession(str(p)).run(None, {"images": x})[0]
    assert np.abs(a - c).max() <= 1e-5


# ----------------------------------------------------------------------------------- torch module



@pytest.fixture(scope="module")
def tiny() -> TinyDetector:
    torch.manual_seed(0)
    return TinyDetector().eval()


def test_module_export_matches_torch(tiny, tmp_path, image_dir):
    x = torch.rand(1, 3, 64, 96)
    p = unideploy.export(tiny, x, out=tmp_path / "tiny.onnx", spec=SPEC)
    with torch.no_grad():
        ref = tiny(x).numpy()
    got = ort.InferenceSession(str(p)).run(None, {"images": x.numpy()})[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5
    spec = unideploy.read_spec(p)
    assert spec.names == SPEC["names"] and spec.imgsz == (64, 96) and spec.family == "yolo" and spec.batch == 1
    with unideploy.load(p, conf=0.3) as pred:  # no flags: the spec travels with the file
        det = pred(sorted(image_dir.iterdir())[0])
    assert det.names == SPEC["names"]


def test_module_export_dynamic_and_static_grid(tiny, tmp_path):
    from unideploy.tools.convert.passes import apply_onnx_passes

    p = unideploy.export(tiny, torch.rand(1, 3, 64, 64), out=tmp_path / "dyn.onnx", spec=SPEC, dynamic=True, simplify=False)
    assert ops(p)["Range"] >= 1  # the grid is computed in the graph
    sess = ort.InferenceSession(str(p))
    for shape in ((2, 3, 64, 64), (1, 3, 96, 128)):
        x = torch.rand(*shape)
        with torch.no_grad():
            assert np.abs(sess.run(None, {"images": x.numpy()})[0] - tiny(x).numpy()).max() <= 1e-5
    fixed = tmp_path / "fixed.onnx"
    fixed.write_bytes(p.read_bytes())
    apply_onnx_passes(fixed, ["static_grid"], imgsz=(96, 128), batch=1)
    assert not DYNAMIC_OPS & set(ops(fixed))
    x = torch.rand(1, 3, 96, 128)
    got = ort.InferenceSession(str(fixed)).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - tiny(x).numpy()).max() <= 1e-5
    assert [d.dim_value for d in onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim] == [1, 3, 96, 128]


@needs_openvino
def test_module_export_to_openvino(tiny, tmp_path):
    x = torch.rand(1, 3, 64, 64)
    xml = unideploy.export(tiny, x, to="openvino", out=tmp_path / "ov", spec=SPEC)
    assert xml == tmp_path / "ov" / "tinydetector.xml"
    assert unideploy.read_spec(xml).names == SPEC["names"]
    with unideploy.load(xml, precision="f32", in_model_preprocess=False) as pred:  # the graph's own float input
        out = pred.session.run(x.numpy())[0]
    with torch.no_grad():
        assert np.abs(out - tiny(x).numpy()).max() <= 1e-4


# -------------------------------------------------------------------------------------------- SiLU

def test_silu_pass_torch(tmp_path):
    from unideploy.tools.convert.passes import silu_torch

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.SiLU(), torch.nn.Sequential(torch.nn.Conv2d(8, 4, 1), torch.nn.SiLU()))
    x = torch.randn(2, 3, 16, 16) * 4
    with torch.no_grad():
        ref = net(x)
        assert silu_torch(net) == 2
        got = net(x)
    assert not any(isinstance(m, torch.nn.SiLU) for m in net.modules())
    assert (got - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_silu_pass_onnx(tmp_path, alpha):
    """Swish (opset 24) nodes become Sigmoid + Mul with outputs unchanged."""
    from onnx import TensorProto, helper, numpy_helper

    from unideploy.tools.convert.passes import apply_onnx_passes

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Swish", ["c"], ["s"], alpha=alpha),
             helper.make_node("Swish", ["s"], ["y"], alpha=alpha)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 24)])
    m.ir_version = 10
    path = tmp_path / "swish.onnx"
    onnx.save(m, str(path))
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32) * 4
    ref = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    apply_onnx_passes(path, ["silu"])
    after = ops(path)
    assert "Swish" not in after and after["Sigmoid"] == 2
    got = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() <= 1e-5


# ------------------------------------------------------------------------------------- bad inputs

def _tiny_onnx(path: Path, dynamic: bool = False) -> Path:
    from onnx import TensorProto, helper

    dims = ["n", 3, "h", "w"] if dynamic else [1, 3, 8, 8]
    g = helper.make_graph([helper.make_node("Relu", ["images"], ["output0"])], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, dims)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


BAD = [
    (dict(to="tflite"), "InputError", "unknown export target 'tflite'; valid targets: engine, om, onnx, openvino, rknn"),
    (dict(passes="silu,fuse_everything"), "InputError", "unknown graph pass 'fuse_everything'; valid passes: silu, static_grid"),
    (dict(passes="static_grid", dynamic=True), "InputError", "cannot be combined with --dynamic"),
    (dict(batch=0), "InputError", "--batch must be a positive integer"),
    (dict(opset=3), "InputError", "--opset must be an ONNX opset number"),
    (dict(spec={"nmes": {0: "a"}}), "InputError", "unknown model spec field(s) ['nmes']"),
]


@pytest.mark.parametrize("alias,target", [("tensorrt", "engine"), ("TRT", "engine"), ("ascend", "om"),
                                          ("onnxruntime", "onnx"), ("ov", "openvino"), ("rknn", "rknn")])
def test_targets_answer_to_backend_names(alias, target):
    from unideploy.tools.convert import EXPORTERS, get_exporter

    assert EXPORTERS.canonical(alias) == target
    assert get_exporter(alias) is get_exporter(target)


def test_export_to_a_backend_name_writes_that_target(tmp_path):
    src = _tiny_onnx(tmp_path / "m.onnx")
    out = unideploy.export(src, to="onnxruntime", out=tmp_path / "copy.onnx", simplify=False)
    assert out == tmp_path / "copy.onnx" and out.is_file()


@pytest.mark.parametrize("kwargs,error,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_options(tmp_path, kwargs, error, message):
    src = _tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(getattr(unideploy, error)) as e:
        unideploy.export(src, **kwargs)
    assert message in str(e.value)


def test_bad_sources(tmp_path, tiny):
    with pytest.raises(unideploy.ModelError, match="model file not found"):
        unideploy.export(tmp_path / "missing.pt")
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(unideploy.InputError, match=r"cannot export a '\.h5' file; export reads \.pt"):
        unideploy.export(tmp_path / "weights.h5")
    with pytest.raises(unideploy.InputError, match="needs spec="):
        unideploy.export(tiny, torch.zeros(1, 3, 32, 32))
    with pytest.raises(unideploy.InputError, match=r"example_input must be an image batch \(N,C,H,W\), got shape \(3, 32, 32\)"):
        unideploy.export(tiny, torch.zeros(3, 32, 32), spec=SPEC)
    static = _tiny_onnx(tmp_path / "static.onnx")
    with pytest.raises(unideploy.InputError, match="is fixed at"):
        unideploy.export(static, imgsz=16)
    with pytest.raises(unideploy.InputError, match="keeps its input shape"):
        unideploy.export(static, dynamic=True)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(unideploy.ModelError):
        unideploy.export(tmp_path / "junk.onnx")


def test_onnx_source_is_never_overwritten_and_can_be_fixed(tmp_path):
    src = _tiny_onnx(tmp_path / "m.onnx", dynamic=True)
    before = src.read_bytes()
    out = unideploy.export(src, imgsz=(8, 16), batch=2, spec={"task": "classify", "names": {0: "a"}})
    assert out == tmp_path / "m_unideploy.onnx" and src.read_bytes() == before
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 8, 16]
    spec = unideploy.read_spec(out)
    assert (spec.task, spec.imgsz, spec.batch, spec.names) == ("classify", (8, 16), 2, {0: "a"})


@pytest.mark.parametrize("module,extra,target,source", [
    ("openvino", "openvino", "openvino", "onnx"),
    ("ultralytics", "ultralytics", "onnx", "pt"),
    ("onnx", "export", "onnx", "onnx"),
])
def test_missing_tool_names_the_extra(tmp_path, monkeypatch, module, extra, target, source):
    src = _tiny_onnx(tmp_path / "m.onnx") if source == "onnx" else tmp_path / "m.pt"
    if source == "pt":
        src.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, module, None)  # importlib.util.find_spec() now reports it missing
    with pytest.raises(unideploy.BackendUnavailableError) as e:
        unideploy.export(src, to=target)
    assert f"pip install 'unideploy[{extra}]'" in str(e.value) and f"'{module}'" in str(e.value)


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from unideploy.cli.main import main

    src = _tiny_onnx(tmp_path / "m.onnx")
    assert main(["export", str(src), "--to", "engine2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown export target 'engine2'; valid targets: engine, om, onnx, openvino, rknn"
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["export", str(src), "--to", "openvino"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'unideploy[openvino]'" in err[0]
    assert main(["export", str(src), "--option", "novalue"]) == 1
    assert "--option expects KEY=VALUE" in capsys.readouterr().err


def test_cli_exports_onnx_with_passes(tmp_path, capsys):
    from unideploy.cli.main import main

    src = _tiny_onnx(tmp_path / "m.onnx", dynamic=True)
    assert main(["export", str(src), "--imgsz", "8", "--passes", "static_grid", "--out", str(tmp_path / "o.onnx")]) == 0
    out = capsys.readouterr().out
    assert "-> " in out and "passes=static_grid" in out and "input=1x3x8x8" in out
