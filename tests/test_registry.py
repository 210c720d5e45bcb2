"""The registries: every available backend runs the demo model; a backend registered from a test module runs
predict, compare and bench with no other file changed; the registry helper's own contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import unideploy
from unideploy.core.errors import InputError
from unideploy.core.registry import Registry
from unideploy.runtime.backends.base import Backend, Session, TensorInfo
from unideploy.runtime.backends.registry import BACKENDS, get_backend, list_backends

DEMO = Path(unideploy.__file__).parent / "assets" / "demo"
DEMO_FILES = {".onnx": DEMO / "shapes_yolov8.onnx", ".pt": DEMO / "shapes_yolov8.pt"}
IMAGES = sorted((DEMO / "val" / "images").glob("*.jpg"))[:6]


@pytest.fixture(scope="module")
def reference():
    """The demo model's detections from ONNX Runtime, the embedded default."""
    with unideploy.load(DEMO_FILES[".onnx"], backend="onnxruntime") as p:
        return p([str(i) for i in IMAGES])


def _demo_file_for(name: str) -> Path | None:
    cls = get_backend(name)
    for suffix, path in DEMO_FILES.items():
        if suffix in cls.suffixes or (suffix == ".onnx" and name in ("onnxruntime", "openvino")):
            return path
    return None


@pytest.mark.parametrize("name", list_backends())
def test_every_available_backend_predicts_the_demo_model(name, reference):
    cls = get_backend(name)
    if not cls.available():
        pytest.skip(f"backend {name}: runtime '{cls.runtime_module}' is not installed here")
    model = _demo_file_for(name)
    if model is None:
        pytest.skip(f"backend {name} opens {cls.suffixes}; the demo ships .onnx and .pt only")
    opts = {"precision": "f32"} if name == "openvino" else {}  # this CPU computes f32 IRs in bf16 by default
    with unideploy.load(model, backend=name, **opts) as p:
        assert p.backend_name == name
        got = p([str(i) for i in IMAGES])
    for a, b in zip(reference, got):
        assert len(a) == len(b)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1.0)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-3)
        np.testing.assert_array_equal(a.class_id, b.class_id)


# ---------------------------------------------------------------------------------------- a toy backend

class ToySession(Session):
    """Runs an ONNX model with ONNX Runtime behind the toy name; the numbers are ORT's, the plumbing is the toy's."""

    backend = "toy"

    def __init__(self, path: Path, device: str) -> None:
        super().__init__(path, device)
        import onnxruntime as ort

        self._sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        dt = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
        self.inputs = [TensorInfo(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
                                  np.dtype(dt[i.type])) for i in self._sess.get_inputs()]
        self.outputs = [TensorInfo(o.name, tuple(d if isinstance(d, int) else None for d in o.shape),
                                   np.dtype(dt[o.type])) for o in self._sess.get_outputs()]
        self.runs = 0

    def _run(self, feeds):
        ToyBackend.runs += 1
        return self._sess.run(None, feeds)

    def _close(self) -> None:
        self._sess = None


class ToyBackend(Backend):
    name = "toy"
    runtime_module = "onnxruntime"
    extra = "onnxruntime"
    suffixes = (".toy",)
    runs = 0

    @classmethod
    def read_metadata(cls, path):
        from unideploy.core.onnx_file import read_onnx_metadata  # each backend reads its own file format

        return read_onnx_metadata(path)

    @classmethod
    def open(cls, path, device=None, **options):
        if options:
            raise InputError(f"toy backend takes no options, got {sorted(options)}")
        return ToySession(Path(path), device or "cpu")


@pytest.fixture
def toy(monkeypatch):
    """ToyBackend registered under "toy" (alias "tb") for one test; the registry is restored afterwards."""
    monkeypatch.setattr(BACKENDS, "_targets", dict(BACKENDS._targets))
    monkeypatch.setattr(BACKENDS, "_loaded", dict(BACKENDS._loaded))
    monkeypatch.setattr(BACKENDS, "_aliases", dict(BACKENDS._aliases))
    BACKENDS.register("toy", ToyBackend, aliases=("tb",))
    ToyBackend.runs = 0
    yield ToyBackend


def test_a_backend_registered_from_a_test_runs_predict_compare_and_bench(toy, reference, tmp_path):
    assert "toy" in list_backends() and "toy" in list_backends(available_only=True)
    with unideploy.load(DEMO_FILES[".onnx"], backend="tb") as p:  # by alias
        assert p.backend_name == "toy"
        got = p([str(i) for i in IMAGES])
    assert toy.runs > 0
    for a, b in zip(reference, got):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)

    r = unideploy.compare(f"{DEMO_FILES['.onnx']}@onnxruntime", f"{DEMO_FILES['.onnx']}@toy", [str(i) for i in IMAGES])
    assert r.passed, r.table()

    from unideploy.tools.bench import benchmark

    report = benchmark(DEMO_FILES[".onnx"], backend="toy", warmup=1, loop=3, measure_startup=False,
                       measure_map=False)
    assert "toy" in str(report)
    runs_before = toy.runs
    assert runs_before >= 4


def test_registry_contract():
    reg: Registry = Registry("widget", error=InputError)
    reg.register("alpha", "collections:OrderedDict", aliases=("a", "First"))
    reg.register("beta", dict)
    assert reg.names() == ["alpha", "beta"]
    assert reg.canonical("FIRST") == "alpha" and reg.canonical("Beta") == "beta"
    import collections

    assert reg.get("a") is collections.OrderedDict and reg.get("beta") is dict
    assert "a" in reg and "gamma" not in reg
    with pytest.raises(InputError, match=r"unknown widget 'gamma'; valid widgets: alpha, beta"):
        reg.get("gamma")
    reg.unregister("first")
    assert reg.names() == ["beta"] and "a" not in reg
    assert reg.names(lambda v: v is dict) == ["beta"]


def test_export_targets_and_backends_share_names():
    for alias, canonical in (("ov", "openvino"), ("ort", "onnxruntime"), ("engine", "tensorrt"), ("om", "ascend")):
        assert BACKENDS.canonical(alias) == canonical
