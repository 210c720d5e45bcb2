"""Huawei Ascend: the ATC command builder and ``export --to om``, the ``ascend`` (ais_bench) and ``acl``
(pyACL) backends, run against faithful in-process doubles (tests/doubles) that execute the matching ONNX model
with ONNX Runtime and enforce the real APIs' contracts. Not run on Ascend hardware."""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

import unideploy
from unideploy.tools.convert import export as convert_export
from unideploy.core.errors import BackendError, BackendUnavailableError, DeviceError, InputError, ModelError

DOUBLES = Path(__file__).resolve().parent / "doubles"
SOC = "Ascend310P3"


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture
def doubles(monkeypatch):
    """Put the ais_bench / acl doubles on sys.path; forget them (and their state) afterwards."""
    monkeypatch.syspath_prepend(str(DOUBLES))
    for name in [m for m in sys.modules if m in ("acl", "fake_om") or m.startswith("ais_bench")]:
        monkeypatch.delitem(sys.modules, name)
    import acl
    from ais_bench.infer import interface

    acl.reset()
    interface.reset_state()
    interface.use_legacy_api(False)
    yield {"acl": acl, "ais": interface}
    for name in [m for m in sys.modules if m in ("acl", "fake_om") or m.startswith("ais_bench")]:
        sys.modules.pop(name, None)


@pytest.fixture
def fake_atc(tmp_path, monkeypatch):
    """An ``atc`` on PATH that checks its flags against ATC's documented options and writes a fake OM."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "atc"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(DOUBLES / 'fake_atc.py'))} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return exe


@pytest.fixture
def tiny_onnx(tmp_path):
    """A 1x1 convolution + sigmoid with dynamic batch and image size: images (N,3,H,W) -> output0 (N,4,H,W)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w", "b"], ["c"]), helper.make_node("Sigmoid", ["c"], ["output0"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def make_om(onnx_path: Path, out: Path, sidecar: bool = False, **om) -> Path:
    """Write a fake OM the way the fake atc does (for backend tests that do not go through export), and with
    ``sidecar`` the spec beside it as export writes it (gears under extra.om)."""
    sys.path.insert(0, str(DOUBLES))
    try:
        from fake_om import write_fake_om
    finally:
        sys.path.remove(str(DOUBLES))
    fields = {"onnx": str(onnx_path), "input_name": "images", "input_shape": [1, 3, 32, 32], "dynamic_batch": None,
              "dynamic_hw": None, "output_type": "FP32", "soc": SOC}
    fields.update(om)
    if sidecar:
        import json

        info = {"mode": "dymbatch" if fields["dynamic_batch"] else "dymhw" if fields["dynamic_hw"] else "static",
                "dynamic_batch": fields["dynamic_batch"] or [], "dynamic_hw": fields["dynamic_hw"] or []}
        out.with_name(out.stem + ".unideploy.json").write_text(json.dumps({"extra": {"om": info}}))
    return write_fake_om(out, **fields)


def ort_run(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


# ----------------------------------------------------------------------------------- ATC commands

def test_atc_command_flag_by_flag(tiny_onnx, tmp_path):
    from unideploy.tools.convert.om import plan_atc
    from unideploy.core.spec import ModelSpec

    spec = ModelSpec(imgsz=(320, 320), names={0: "a"})
    plan = plan_atc(tiny_onnx, spec, tmp_path / "out" / "m.om", {"soc": SOC, "dynamic_batch": "8,1,4,2",
                                                                   "precision_mode": "allow_fp32_to_fp16"})
    cmd = plan.command()
    assert cmd == [
        "atc",
        f"--model={tiny_onnx}",
        "--framework=5",                         # 5 = ONNX
        f"--output={tmp_path / 'out' / 'm'}",    # ATC appends .om
        "--soc_version=Ascend310P3",
        "--input_format=NCHW",
        "--input_shape=images:-1,3,320,320",     # -1: the dynamic batch axis
        "--dynamic_batch_size=1,2,4,8",
        "--precision_mode=allow_fp32_to_fp16",
        "--output_type=FP32",
        "--log=error",
    ]
    assert plan.mode == "dymbatch" and plan.om_info()["dynamic_batch"] == [1, 2, 4, 8]
    hw = plan_atc(tiny_onnx, spec, tmp_path / "m.om", {"soc": SOC, "dynamic_hw": "480,640;640,640"})
    assert "--input_shape=images:1,3,-1,-1" in hw.command()
    assert "--dynamic_image_size=320,320;480,640;640,640" in hw.command()  # the spec's own size is a gear
    assert "'--dynamic_image_size=320,320;480,640;640,640'" in hw.shell()  # quoted for the shell
    static = plan_atc(tiny_onnx, spec, tmp_path / "m.om", {"soc": SOC}, batch=2).command()
    assert "--input_shape=images:2,3,320,320" in static
    assert not any(a.startswith(("--dynamic", "--precision_mode")) for a in static)


@pytest.mark.parametrize("extra,message", [
    ({"dynamic_batch": "4"}, "between 2 and 100"),
    ({"dynamic_batch": "1,4096"}, r"\[1, 2048\]"),
    ({"dynamic_batch": "1,2", "dynamic_hw": "320,320;640,640"}, "cannot combine"),
    ({"dynamic_hw": "320,330;640,640"}, "multiples of the model stride"),
    ({"precision_mode": "fp8"}, "precision_mode must be one of"),
    ({"output_type": "FP64"}, "output_type must be one of"),
    ({"speed": "fast"}, "unknown om option"),
])
def test_atc_option_errors(tiny_onnx, tmp_path, extra, message):
    from unideploy.tools.convert.om import plan_atc
    from unideploy.core.spec import ModelSpec

    with pytest.raises(InputError, match=message):
        plan_atc(tiny_onnx, ModelSpec(imgsz=(320, 320)), tmp_path / "m.om", {"soc": SOC, **extra})


def test_soc_needed_without_npu_smi(tiny_onnx, tmp_path, monkeypatch):
    from unideploy.tools.convert.om import plan_atc
    from unideploy.core.spec import ModelSpec

    monkeypatch.setenv("PATH", str(tmp_path))  # no npu-smi
    with pytest.raises(InputError, match="soc=Ascend310P3"):
        plan_atc(tiny_onnx, ModelSpec(imgsz=(64, 64)), tmp_path / "m.om", {})


def test_soc_from_npu_smi_output():
    from unideploy.tools.convert.om import soc_from_npu_smi

    table = """
+--------------------------------------------------------------------------------------------------------+
| npu-smi 23.0.0                                   Version: 23.0.0                                       |
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===============================+=================+======================================================+
| 0       310P3                 | OK              | NA           44                0     / 0             |
| 0       0                     | 0000:3B:00.0    | 0            1673 / 21527                            |
+===============================+=================+======================================================+
"""
    assert soc_from_npu_smi(table) == "Ascend310P3"
    assert soc_from_npu_smi("| 4     910B3               | OK            | 93.6        39                0    / 0   |") == "Ascend910B3"
    assert soc_from_npu_smi("no table here") is None


# ------------------------------------------------------------------------------------ export --to om

def test_export_om_without_atc_prints_the_command(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "deploy" / "tiny.om"
    with pytest.raises(BackendUnavailableError) as e:
        convert_export(tiny_onnx, to="om", out=out, imgsz=64, soc=SOC,
                                 spec={"names": {0: "a", 1: "b"}, "task": "detect"})
    msg = str(e.value)
    kept = out.with_name("tiny_atc.onnx")
    assert "not on PATH" in msg and "set_env.sh" in msg
    assert f"atc --model={kept} --framework=5 --output={out.with_suffix('')} --soc_version=Ascend310P3" in msg
    assert kept.is_file(), "the ONNX the printed command needs must be kept"
    side = out.with_name("tiny.unideploy.json")
    assert side.is_file()
    spec = unideploy.read_spec(out)  # the sidecar is found for the OM path
    assert spec.imgsz == (64, 64) and spec.names == {0: "a", 1: "b"}
    assert spec.extra["om"]["atc_command"].startswith("atc --model=")


def test_export_om_runs_atc(tiny_onnx, tmp_path, fake_atc):
    out = convert_export(tiny_onnx, to="om", out=tmp_path / "m.om", imgsz=64, soc=SOC, dynamic_batch="1,2,4",
                                   spec={"names": {0: "a"}})
    assert out == tmp_path / "m.om" and out.is_file()
    assert not (tmp_path / "m_atc.onnx").exists()  # intermediate removed after a successful run
    spec = unideploy.read_spec(out)
    assert spec.extra["om"]["mode"] == "dymbatch" and spec.batch is None
    import json

    assert json.loads(out.read_text())["dynamic_batch"] == [1, 2, 4]  # what the (fake) atc was told


def test_export_om_reports_atc_failure(tiny_onnx, tmp_path, fake_atc):
    with pytest.raises(BackendError, match="(?s)atc failed.*E10001"):
        convert_export(tiny_onnx, to="om", out=tmp_path / "m.om", imgsz=64, soc="Ascend999",
                                 spec={"names": {0: "a"}})


# --------------------------------------------------------------------------------- ascend backend

def test_ascend_static_model(doubles, tiny_onnx, tmp_path):
    om = make_om(tiny_onnx, tmp_path / "m.om")
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    from unideploy.runtime.backends.ascend import AscendBackend

    with AscendBackend.open(om, "npu:0") as s:
        assert s.mode == "static"
        assert s.inputs[0].shape == (1, 3, 32, 32) and s.outputs[0].shape == (1, 4, 32, 32)
        (y,) = s.run(x)
        np.testing.assert_allclose(y, ort_run(tiny_onnx, x), rtol=1e-6)
        t = s.last_timings
        assert t.compute is not None and t.h2d is not None and t.d2h is not None
        with pytest.raises(InputError, match="expects"):
            s.run(np.zeros((2, 3, 32, 32), np.float32))
    calls = doubles["ais"].STATE.calls
    assert ("free_resource", 0) in calls
    assert all(sess._freed for sess in doubles["ais"].STATE.sessions)


def test_ascend_legacy_ais_bench_api(doubles, tiny_onnx, tmp_path):
    doubles["ais"].use_legacy_api(True)
    om = make_om(tiny_onnx, tmp_path / "m.om")
    with unideploy.get_backend("ascend").open(om, "0") as s:
        s.run(np.zeros((1, 3, 32, 32), np.float32))
        assert s.last_timings.compute is not None and s.last_timings.h2d is not None


def test_ascend_dynamic_batch_pads_to_gears_and_splits(doubles, tiny_onnx, tmp_path):
    om = make_om(tiny_onnx, tmp_path / "m.om", sidecar=True, input_shape=[-1, 3, 32, 32], dynamic_batch=[1, 2, 4])
    rng = np.random.default_rng(2)
    with unideploy.get_backend("ascend").open(om, "0") as s:
        assert s.mode == "dymbatch" and s.inputs[0].shape == (None, 3, 32, 32)
        for n in (1, 3, 4, 7):  # 3 -> gear 4; 7 -> split 4 + 3(->4)
            x = rng.random((n, 3, 32, 32), dtype=np.float32)
            (y,) = s.run(x)
            assert y.shape == (n, 4, 32, 32)
            np.testing.assert_allclose(y, ort_run(tiny_onnx, x), rtol=1e-6)
    infer_batches = [c for c in doubles["ais"].STATE.calls if c[0] == "infer"]
    assert len(infer_batches) == 5


def test_ascend_several_devices_share_a_batch(doubles, tiny_onnx, tmp_path):
    om = make_om(tiny_onnx, tmp_path / "m.om", input_shape=[-1, 3, 32, 32], dynamic_batch=[1, 2, 4, 8])
    x = np.random.default_rng(3).random((8, 3, 32, 32), dtype=np.float32)
    with unideploy.get_backend("ascend").open(om, "0,1", dynamic_batch=[1, 2, 4, 8]) as s:
        assert s.device == "npu:0,npu:1"
        (y,) = s.run(x)
        np.testing.assert_allclose(y, ort_run(tiny_onnx, x), rtol=1e-6)
        assert s.last_timings.extra["devices_used"] == 2
    devices = {c[1] for c in doubles["ais"].STATE.calls if c[0] == "infer"}
    assert devices == {0, 1}
    assert {c[1] for c in doubles["ais"].STATE.calls if c[0] == "free_resource"} == {0, 1}


def test_ascend_dynamic_hw_and_dymshape(doubles, tiny_onnx, tmp_path):
    om = make_om(tiny_onnx, tmp_path / "hw.om", input_shape=[1, 3, -1, -1], dynamic_hw=[[32, 32], [64, 32]])
    with unideploy.get_backend("ascend").open(om, "0", dynamic_hw=[(32, 32), (64, 32)]) as s:
        assert s.mode == "dymhw" and s.inputs[0].shape == (1, 3, None, None)
        x = np.ones((1, 3, 64, 32), np.float32)
        np.testing.assert_allclose(s.run(x)[0], ort_run(tiny_onnx, x), rtol=1e-6)
        with pytest.raises(InputError, match="built for the image sizes 32x32, 64x32"):
            s.run(np.ones((1, 3, 48, 32), np.float32))
    om2 = make_om(tiny_onnx, tmp_path / "shape.om", input_shape=[1, 3, 32, 32])
    with unideploy.get_backend("ascend").open(om2, "0", mode="dymshape", custom_sizes=16) as s:
        with pytest.raises(BackendError, match="custom_sizes reserved 16"):
            s.run(np.ones((1, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="mode must be one of"):
        unideploy.get_backend("ascend").open(om2, "0", mode="turbo")


def test_ascend_device_and_file_errors(doubles, tiny_onnx, tmp_path):
    om = make_om(tiny_onnx, tmp_path / "m.om")
    backend = unideploy.get_backend("ascend")
    with pytest.raises(DeviceError, match="device 5"):
        backend.open(om, "5")
    with pytest.raises(DeviceError, match="id like 0, npu:0"):
        backend.open(om, "cuda:0")
    bad = tmp_path / "bad.om"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="OM model"):
        backend.open(bad, "0")
    with pytest.raises(ModelError, match="--to om"):
        backend.open(tiny_onnx, "0")
    # a failure on the second device releases the first
    with pytest.raises(DeviceError):
        backend.open(om, "0,7")
    assert all(s._freed for s in doubles["ais"].STATE.sessions)


def test_ascend_missing_runtime_names_the_fix(monkeypatch):
    from unideploy.runtime.backends.ascend import AscendBackend
    from unideploy.runtime.backends.acl import AclBackend

    monkeypatch.setattr(AscendBackend, "available", classmethod(lambda cls: False))
    monkeypatch.setattr(AclBackend, "available", classmethod(lambda cls: False))
    with pytest.raises(BackendUnavailableError, match="ais_bench.*--backend acl"):
        AscendBackend.require()
    with pytest.raises(BackendUnavailableError, match="set_env.sh"):
        AclBackend.require()


# ------------------------------------------------------------------------------------ acl backend

def test_acl_lifecycle_in_order(doubles, tiny_onnx, tmp_path):
    acl = doubles["acl"]
    om = make_om(tiny_onnx, tmp_path / "m.om", input_shape=[-1, 3, 32, 32], dynamic_batch=[1, 2, 4])
    x = np.random.default_rng(4).random((3, 3, 32, 32), dtype=np.float32)
    with unideploy.get_backend("acl").open(om, "npu:1") as s:
        assert s.inputs[0].shape == (None, 3, 32, 32) and s.batch_gears == [1, 2, 4]
        assert [i.name for i in s.inputs] == ["images"]  # ATC's ascend_mbatch_shape_data stays internal
        (y,) = s.run(x)
        np.testing.assert_allclose(y, ort_run(tiny_onnx, x), rtol=1e-6)
        t = s.last_timings
        assert None not in (t.h2d, t.compute, t.d2h)
    assert acl.live() == {} and not acl.S.inited and acl.VIOLATIONS == []
    calls = acl.CALLS
    order = ["acl.init", "acl.rt.set_device", "acl.rt.create_context", "acl.mdl.load_from_file", "acl.mdl.get_desc",
             "acl.rt.malloc", "acl.mdl.add_dataset_buffer", "acl.rt.memcpy", "acl.mdl.set_dynamic_batch_size",
             "acl.mdl.execute", "acl.mdl.get_cur_output_dims", "acl.destroy_data_buffer", "acl.mdl.destroy_dataset",
             "acl.mdl.destroy_desc", "acl.mdl.unload", "acl.rt.destroy_context", "acl.rt.reset_device", "acl.finalize"]
    positions = [calls.index(c) for c in order]
    assert positions == sorted(positions), "pyACL calls out of order"
    # every buffer freed after its data buffer was destroyed, all before the description and the model
    assert max(i for i, c in enumerate(calls) if c == "acl.rt.free") < calls.index("acl.mdl.destroy_desc")


ACL_OPEN_CALLS = ["acl.init", "acl.rt.set_device", "acl.rt.create_context", "acl.rt.get_run_mode",
                  "acl.mdl.load_from_file", "acl.mdl.get_desc", "acl.mdl.create_dataset", "acl.rt.malloc",
                  "acl.mdl.add_dataset_buffer", "acl.mdl.get_input_dims", "acl.mdl.get_output_dims"]


@pytest.mark.parametrize("call", ACL_OPEN_CALLS)
def test_acl_open_failure_releases_everything(doubles, tiny_onnx, tmp_path, call):
    acl = doubles["acl"]
    om = make_om(tiny_onnx, tmp_path / "m.om", input_shape=[-1, 3, 32, 32], dynamic_batch=[1, 2])
    acl.fail_next(call, 100000)
    with pytest.raises((BackendError, DeviceError, ModelError)) as e:
        unideploy.get_backend("acl").open(om, "0")
    assert call.split(".")[-1] in str(e.value) or call == "acl.mdl.create_dataset"
    assert acl.live() == {}, f"resources leaked after {call} failed: {acl.live()}"
    assert not acl.S.inited and acl.VIOLATIONS == []


def test_acl_run_failures(doubles, tiny_onnx, tmp_path):
    acl = doubles["acl"]
    om = make_om(tiny_onnx, tmp_path / "m.om")
    s = unideploy.get_backend("acl").open(om, "0")
    x = np.zeros((1, 3, 32, 32), np.float32)
    for call in ("acl.mdl.execute", "acl.rt.memcpy"):
        acl.fail_next(call, 507011)
        with pytest.raises(BackendError, match=f"{call}.*507011"):
            s.run(x)
    (y,) = s.run(x)  # still usable afterwards
    assert y.shape == (1, 4, 32, 32)
    s.close()
    assert acl.live() == {} and acl.VIOLATIONS == []


def test_acl_release_failure_is_reported_and_the_rest_released(doubles, tiny_onnx, tmp_path):
    acl = doubles["acl"]
    om = make_om(tiny_onnx, tmp_path / "m.om")
    s = unideploy.get_backend("acl").open(om, "0")
    acl.fail_next("acl.mdl.unload", 100000)
    with pytest.raises(BackendError, match="acl.mdl.unload returned ACL error 100000"):
        s.close()
    live = acl.live()
    assert set(live) <= {"models", "devices", "contexts"}  # only what depends on the model that failed to unload
    assert "mem" not in live and "buffers" not in live and "datasets" not in live


def test_acl_atexit_closes_open_sessions(doubles, tiny_onnx, tmp_path):
    from unideploy.runtime.backends import acl as acl_backend

    acl = doubles["acl"]
    om = make_om(tiny_onnx, tmp_path / "m.om")
    s1 = unideploy.get_backend("acl").open(om, "0")
    s2 = unideploy.get_backend("acl").open(om, "0,1")
    assert acl.live()
    acl_backend._close_all()
    assert acl.live() == {} and not acl.S.inited and acl.VIOLATIONS == []
    assert s1._closed and s2._closed


def test_acl_keeps_acl_initialised_by_the_host_program(doubles, tiny_onnx, tmp_path):
    acl = doubles["acl"]
    assert acl.init() == 0  # the host program owns ACL
    om = make_om(tiny_onnx, tmp_path / "m.om")
    with unideploy.get_backend("acl").open(om, "0") as s:
        s.run(np.zeros((1, 3, 32, 32), np.float32))
    assert acl.S.inited and acl.CALLS.count("acl.finalize") == 0
    assert acl.finalize() == 0


# ------------------------------------------------------------------------------- whole pipeline

@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ascend", "acl"])
def test_predict_through_om_matches_onnxruntime(doubles, fake_atc, yolo_models, image_dir, tmp_path, backend):
    """export --to om (fake atc), then predict with the OM: same detections as ONNX Runtime on the ONNX."""
    src = yolo_models["yolov8n"]["onnx"]
    om = convert_export(src, to="om", out=tmp_path / "yolov8n.om", soc=SOC, dynamic_batch="1,2,4")
    files = sorted(image_dir.iterdir())
    with unideploy.load(src, conf=0.25) as ref_pred:
        ref = ref_pred(files)
    with unideploy.load(om, backend=backend, device="0", batch=3, conf=0.25) as pred:
        assert pred.spec.imgsz == (320, 320) and len(pred.spec.names) == 80
        ours = pred(files)
        assert pred.session.last_timings.compute is not None
    from parity import assert_same_detections

    for f, o, r in zip(files, ours, ref):
        assert_same_detections(o, r.xyxy, r.confidence, r.class_id, px=1e-3, score_tol=1e-6, where=f.name)
    assert sum(len(o) for o in ours) > len(files)
    if backend == "acl":
        assert doubles["acl"].live() == {} and doubles["acl"].VIOLATIONS == []


@pytest.mark.slow
def test_default_backend_for_om_is_ascend(doubles, tiny_onnx, tmp_path):
    from unideploy.runtime.backends.registry import backend_for_path

    assert backend_for_path(tmp_path / "x.om") == "ascend"
