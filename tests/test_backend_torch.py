"""PyTorch backend on the CPU: parity with ONNX Runtime on the same weights (.pt, TorchScript, torch.export),
the spec read from the checkpoint, safe loading, precisions and device strings."""

from __future__ import annotations

import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

import unideploy
from conftest import SIZES, scene
from parity import assert_same_detections
from unideploy.core.errors import BackendUnavailableError, DeviceError, InputError, ModelError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory):
    pytest.importorskip("ultralytics")
    from torch_helpers import build_torch_models

    return build_torch_models(tmp_path_factory.mktemp("torch_models"))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1234)
    return [scene(rng, h, w) for h, w in SIZES[:12]]


# ------------------------------------------------------------------------------------------ parity

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt", "torchscript", "pt2"])
def test_parity_with_onnxruntime(torch_models, images, fmt):
    """Same weights, same images: boxes within 1 px and scores within 1e-3 of ONNX Runtime (fp32)."""
    with unideploy.load(torch_models["onnx"], backend="onnxruntime", conf=0.25) as ref_pred:
        ref = ref_pred(images)
    with unideploy.load(torch_models[fmt], backend="torch", device="cpu", conf=0.25) as pred:
        assert pred.backend_name == "torch"
        ours = pred(images)
    total = 0
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert_same_detections(o, r.xyxy, r.confidence, r.class_id, px=1.0, score_tol=1e-3, where=f"{fmt}/image{i}")
        assert o.image_shape == r.image_shape
        total += len(o)
    assert total > 10 * len(images), "too few boxes for the comparison to exercise NMS"


@pytest.mark.slow
def test_raw_outputs_match_onnxruntime(torch_models, images):
    with unideploy.load(torch_models["onnx"]) as ref_pred:
        x = ref_pred.preprocess(images[0])[0][None]
        b = ref_pred.session.run(x)[0]
    with unideploy.load(torch_models["pt"], backend="torch") as pred:
        a = pred.session.run(x)[0]
        assert pred.session.last_timings.compute is not None
    assert a.shape == b.shape and a.dtype == np.float32
    assert np.abs(a[:, :4] - b[:, :4]).max() < 0.01
    assert np.abs(a[:, 4:] - b[:, 4:]).max() < 1e-4


# ------------------------------------------------------------------------------------------ spec

@pytest.mark.slow
def test_spec_comes_from_the_checkpoint(torch_models):
    spec = unideploy.read_spec(torch_models["pt"])
    assert spec.imgsz == (320, 320)  # train_args of the checkpoint
    assert spec.stride == 32 and spec.family == "yolo" and spec.task == "detect"
    assert len(spec.names) == 80 and spec.names[0] == "0"
    with unideploy.load(torch_models["pt"], backend="torch") as pred:
        assert pred.spec.imgsz == (320, 320)
        assert pred.session.outputs[0].shape == (None, 84, None)
        assert pred.adapter.name == "yolo"
    with unideploy.load(torch_models["torchscript"], backend="torch") as pred:  # Ultralytics' config.txt
        assert pred.spec.imgsz == (320, 320) and len(pred.spec.names) == 80
        assert pred.session.inputs[0].shape == (1, 3, 320, 320)


@pytest.mark.slow
def test_default_backend_for_pt_is_torch(torch_models):
    from unideploy.runtime.backends.registry import backend_for_path

    assert backend_for_path(torch_models["pt"]) == "torch"
    assert backend_for_path(torch_models["pt2"]) == "torch"
    assert backend_for_path(torch_models["torchscript"]) == "torch"
    assert "torch" in unideploy.list_backends()


# ---------------------------------------------------------------------------------- safe loading

class _Payload:
    """Pickles as a call to ``builtins.exec`` that writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def poisoned_checkpoint(torch_models, tmp_path):
    """The real Ultralytics checkpoint with one extra entry that runs code when unpickled."""
    from unideploy.runtime.backends.torch import load_checkpoint

    ckpt = load_checkpoint(torch_models["pt"])
    marker = tmp_path / "marker.txt"
    ckpt["notes"] = _Payload(str(marker))
    path = tmp_path / "poisoned.pt"
    torch.save(ckpt, path)
    return path, marker


@pytest.mark.slow
def test_payload_is_not_executed_without_trust(poisoned_checkpoint):
    path, marker = poisoned_checkpoint
    from unideploy.runtime.backends.torch import read_torch_metadata

    meta = read_torch_metadata(path)  # walks the pickle with inert stand-ins
    assert meta["task"] == "detect" and not marker.exists()
    with pytest.raises(ModelError) as e:
        unideploy.load(path, backend="torch")
    msg = str(e.value)
    assert "exec" in msg and "trust_pickle" in msg and "weights_only" in msg
    assert not marker.exists(), "the safe loader executed code from the checkpoint"


@pytest.mark.slow
def test_trust_pickle_warns_and_unpickles_fully(poisoned_checkpoint):
    from unideploy.runtime.backends.torch import UnsafeCheckpointWarning

    path, marker = poisoned_checkpoint
    with pytest.warns(UnsafeCheckpointWarning, match="runs any code"):
        with unideploy.load(path, backend="torch", trust_pickle=True) as pred:
            assert pred.spec.imgsz == (320, 320)
    assert marker.exists()  # full unpickling is exactly what the warning says


def test_refuses_os_system_in_a_plain_pickle(tmp_path):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(ModelError, match="system"):
        unideploy.load(path, backend="torch")
    assert not marker.exists()


def test_bad_files(tmp_path):
    sd = tmp_path / "weights.pt"
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), sd)
    with pytest.raises(ModelError, match="state_dict"):
        unideploy.load(sd, backend="torch")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="PyTorch file"):
        unideploy.load(junk, backend="torch")
    zipped = tmp_path / "other.pt"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("a/readme.txt", "hello")
    with pytest.raises(ModelError, match="none of their markers"):
        unideploy.load(zipped, backend="torch")
    with pytest.raises(ModelError, match="not found"):
        unideploy.load(tmp_path / "missing.pt", backend="torch")


def test_plain_module_checkpoint_and_input_checks(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Flatten(2)).eval()
    path = tmp_path / "net.pt"
    torch.save(net, path)  # a whole nn.Module: torch.nn classes only, allowed by the safe loader
    from unideploy.runtime.backends.torch import TorchBackend

    with TorchBackend.open(path, "cpu", imgsz=64) as s:
        assert s.kind == "module"
        assert s.inputs[0].shape == (None, 3, None, None)
        x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
        (out,) = s.run(x)
        np.testing.assert_allclose(out, net(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
        with pytest.raises(InputError, match="expects"):
            s.run(x.astype(np.float64))
        with pytest.raises(InputError, match="expects"):
            s.run(x[0])
    with pytest.raises(Exception, match="closed"):
        s.run(x)


# ------------------------------------------------------------------------------------ precision

@pytest.mark.slow
@pytest.mark.parametrize("precision,box_px,score", [("fp16", 2.0, 5e-3), ("bf16", 16.0, 0.03)])
def test_reduced_precision_on_cpu(torch_models, images, precision, box_px, score):
    """fp16 / bf16 really run in that dtype; raw outputs stay close to fp32 ONNX Runtime
    (measured here: fp16 0.49 px / 1.1e-3, bf16 4.2 px / 7.7e-3 at 320x320)."""
    with unideploy.load(torch_models["onnx"]) as ref_pred:
        x = ref_pred.preprocess(images[0])[0][None]
        b = ref_pred.session.run(x)[0]
    want = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    with unideploy.load(torch_models["pt"], backend="torch", precision=precision) as pred:
        assert next(pred.session.module.parameters()).dtype == want
        a = pred.session.run(x)[0]
        dets = pred(images[:4])
    assert a.dtype == np.float32
    assert np.abs(a[:, :4] - b[:, :4]).max() < box_px
    assert np.abs(a[:, 4:] - b[:, 4:]).max() < score
    assert sum(len(d) for d in dets) > 0


def test_bad_precision(tmp_path):
    path = tmp_path / "net.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), path)
    with pytest.raises(InputError, match="fp32, fp16 or bf16"):
        unideploy.runtime.backends.registry.get_backend("torch").open(path, "cpu", precision="int4")


# -------------------------------------------------------------------------------------- devices

def test_device_strings():
    from unideploy.runtime.backends.torch import parse_device

    assert parse_device(None) == ("cpu", None)
    assert parse_device("cpu") == ("cpu", None)
    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("0") == ("cuda", 0)
    assert parse_device("NPU:3") == ("npu", 3)
    assert parse_device("mlu") == ("mlu", None)
    for bad in ("tpu", "cuda:x", "gpu:0", "cpu:1", "npu:-1"):
        with pytest.raises(DeviceError, match="cpu, cuda"):
            parse_device(bad)


@pytest.mark.parametrize("device,module", [("npu:0", "torch_npu"), ("mlu:0", "torch_mlu")])
def test_vendor_plugin_missing_is_a_clear_error(device, module, monkeypatch):
    from unideploy.runtime.backends import torch_device as tb

    if module in sys.modules or __import__("importlib.util").util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(BackendUnavailableError, match=module):
        tb.resolve_device(device)
    assert module not in sys.modules


def test_vendor_plugin_imported_only_when_asked(monkeypatch):
    """A stand-in torch_npu: imported for npu:N only, and a device index past its count is refused."""
    from unideploy.runtime.backends import torch_device as tb

    imported = []
    fake = types.ModuleType("torch_npu")
    real_find_spec = __import__("importlib.util").util.find_spec

    def find_spec(name, *a, **k):
        return object() if name == "torch_npu" else real_find_spec(name, *a, **k)

    def fake_import(name, *a, **k):
        if name == "torch_npu":
            imported.append(name)
            monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 1), raising=False)
            return fake
        return real_import(name, *a, **k)

    import importlib

    real_import = importlib.import_module
    monkeypatch.setattr(tb.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(tb.importlib, "import_module", fake_import)
    assert str(tb.resolve_device("cpu")) == "cpu" and imported == []
    with pytest.raises(DeviceError, match="1 npu device"):
        tb.resolve_device("npu:2")
    assert imported == ["torch_npu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_gpu_is_a_device_error():
    from unideploy.runtime.backends.torch import resolve_device

    with pytest.raises(DeviceError, match="no cuda device"):
        resolve_device("cuda:0")


def test_inert_walker_runs_nothing(tmp_path):
    """read_torch_metadata never imports or calls what a pickle names."""
    from unideploy.runtime.backends.torch import read_torch_metadata

    marker = tmp_path / "m"
    payload = pickle.dumps({"model": None, "x": _Payload(str(marker))})
    path = tmp_path / "p.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("p/data.pkl", payload)
        z.writestr("p/version", "3\n")
    assert read_torch_metadata(path) == {}
    assert not marker.exists()
