"""Reliability: hostile model files.

* ONNX external data: locations that escape the model's folder (``../``, absolute, ``subdir/../..``, Windows
  style, symlinks, ONNX Runtime's in-memory marker), in initializers, node attributes and sub-graphs, are refused
  before ONNX Runtime or OpenVINO reads anything; legitimate external data (a sibling file, a sub-folder, a
  Hugging Face style symlinked snapshot) loads and predicts like the self-contained model.
* SHA-256 pinning (``sha256=`` / ``--model-sha256``): a mismatch is a one-line ModelError before any parser or
  runtime touches the file, also for native engines (.om) whose runtime is not installed.
* Pickle safety through the CLI: a payload checkpoint does not run without ``--trust-pickle``.
* Fuzzing (hypothesis) of the spec reader and model loading raises only UnideployError subclasses.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import unideploy
from conftest import has_module
from reliability_helpers import BACKENDS, fuzz_settings, model_for
from unideploy.cli.main import main
from unideploy.core.errors import InputError, ModelError, UnideployError, UnsafeModelError
from unideploy.core.onnx_file import check_onnx_external_data, onnx_external_refs
from unideploy.core.security import verify_sha256

pytestmark = pytest.mark.timeout(600)
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.external_data_helper import convert_model_to_external_data, set_external_data  # noqa: E402

W = np.arange(16, dtype=np.float32).reshape(4, 4)


def matmul_model(where: str = "initializer", opset: int = 17) -> onnx.ModelProto:
    """y = x @ W with W as an initializer, a Constant node's attribute, or an initializer inside an If branch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(W, "w")
    if where == "initializer":
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    elif where == "attribute":
        g = helper.make_graph(
            [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["y"])],
            "g",
            [x],
            [y],
        )
    else:  # a sub-graph of an If node
        then = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y_then"])],
            "then",
            [],
            [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [1, 4])],
            [w],
        )
        other = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y_else"])],
            "else",
            [],
            [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [1, 4])],
        )
        cond = numpy_helper.from_array(np.array(True), "cond")
        g = helper.make_graph(
            [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)], "g", [x], [y], [cond]
        )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _tensors(model: onnx.ModelProto):
    for t in model.graph.initializer:
        yield t
    for node in model.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            if a.HasField("g"):
                yield from a.g.initializer


def save_with_location(model: onnx.ModelProto, folder: Path, location: str, name: str = "model.onnx") -> Path:
    """Save ``model`` with W's bytes referenced at ``location`` (no file is written there)."""
    folder.mkdir(parents=True, exist_ok=True)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in _tensors(m):
        if t.name == "w":
            set_external_data(t, location=location, offset=0, length=W.nbytes)
            t.data_location = TensorProto.EXTERNAL
            t.ClearField("raw_data")
            t.ClearField("float_data")
    path = folder / name
    path.write_bytes(m.SerializeToString())
    return path


@pytest.fixture()
def layout(tmp_path) -> Path:
    """tmp/secret.bin (outside), tmp/m/ (the model folder) with w.bin, sub/w.bin and escaping symlinks."""
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.bin").write_bytes(W.tobytes())
    m = tmp_path / "m"
    (m / "sub").mkdir(parents=True)
    (m / "w.bin").write_bytes(W.tobytes())
    (m / "sub" / "w.bin").write_bytes(W.tobytes())
    (m / "link.bin").symlink_to(tmp_path / "secret.bin")
    (m / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (m / "inner_link.bin").symlink_to(m / "sub" / "w.bin")  # a symlink that stays inside is fine
    return tmp_path


ESCAPES = {
    "parent": ("../secret.bin", "'..'"),
    "nested parent": ("sub/../../secret.bin", "'..'"),
    "absolute": ("{tmp}/secret.bin", "absolute"),
    "windows parent": ("..\\secret.bin", "'..'"),
    "windows absolute": ("C:\\Windows\\win.ini", "absolute"),
    "home": ("~/secret.bin", "absolute"),
    "symlinked file": ("link.bin", "through a symlink"),
    "symlinked folder": ("linkdir/w.bin", "through a symlink"),
    "ORT memory marker": ("*/_ORT_MEM_ADDR_/*", "in-memory address marker"),
    "NUL": ("w.bin\x00../../secret.bin", "NUL"),
}


@pytest.fixture()
def runtimes_must_not_run(monkeypatch):
    """Fail the test if ONNX Runtime or OpenVINO is asked to load a model."""
    import onnxruntime as ort

    def boom(*a, **k):
        raise AssertionError("the runtime was asked to load a model that should have been refused first")

    monkeypatch.setattr(ort, "InferenceSession", boom)
    if has_module("openvino"):
        import openvino as ov

        monkeypatch.setattr(ov.Core, "compile_model", boom)
        monkeypatch.setattr(ov.Core, "read_model", boom)


@pytest.mark.parametrize("where", ["initializer", "attribute", "subgraph"])
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_external_data_is_refused_before_the_runtime(layout, case, where, runtimes_must_not_run):
    location, reason = ESCAPES[case]
    path = save_with_location(matmul_model(where), layout / "m", location.format(tmp=layout))
    assert [r.location for r in onnx_external_refs(path)] == [location.format(tmp=layout)]
    with pytest.raises(UnsafeModelError, match="tensor 'w' has external data at") as e:
        check_onnx_external_data(path)
    assert reason in str(e.value)
    from unideploy.runtime.backends.registry import get_backend

    for backend in ("onnxruntime", "openvino"):
        if not has_module(backend):
            continue
        with pytest.raises(UnsafeModelError):
            get_backend(backend).open(path)


def test_cli_refuses_escaping_external_data_in_one_line(layout, capsys):
    path = save_with_location(matmul_model(), layout / "m", "../secret.bin")
    img = layout / "a.png"
    import cv2

    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    assert main(["predict", str(path), str(img)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'../secret.bin'" in err[0], err


@pytest.mark.parametrize("location", ["w.bin", "sub/w.bin", "./w.bin", "inner_link.bin"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_external_data_inside_the_folder_loads(layout, location, backend):
    if not has_module(backend):
        pytest.skip(f"{backend} not installed")
    from unideploy.runtime.backends.registry import get_backend

    path = save_with_location(matmul_model(), layout / "m", location)
    assert check_onnx_external_data(path)[0].location == location
    x = np.ones((1, 4), np.float32)
    with get_backend(backend).open(path) as s:
        np.testing.assert_allclose(s.run(x)[0], x @ W)


@pytest.mark.parametrize("problem,match", [("missing", "does not exist"), ("short", "holds only 32 bytes")])
def test_missing_or_short_external_data_is_a_model_error(layout, problem, match):
    path = save_with_location(matmul_model(), layout / "m", "gone.bin" if problem == "missing" else "short.bin")
    if problem == "short":
        (layout / "m" / "short.bin").write_bytes(W.tobytes()[:32])
    with pytest.raises(ModelError, match=match) as e:
        check_onnx_external_data(path)
    assert not isinstance(e.value, UnsafeModelError)


def test_hugging_face_style_symlinked_snapshot_is_accepted(layout):
    """model.onnx and its data both symlinked into a blobs/ folder, as the Hugging Face cache stores them."""
    blobs, snap = layout / "blobs", layout / "snapshots" / "abc"
    save_with_location(matmul_model(), blobs, "model.onnx.data", name="blob1")
    (blobs / "blob2").write_bytes(W.tobytes())
    snap.mkdir(parents=True)
    (snap / "model.onnx").symlink_to(Path("../../blobs/blob1"))
    (snap / "model.onnx.data").symlink_to(Path("../../blobs/blob2"))
    assert check_onnx_external_data(snap / "model.onnx")[0].location == "model.onnx.data"


@pytest.mark.parametrize("backend", BACKENDS)
def test_detector_with_external_data_predicts_like_the_original(tiny, tmp_path, backend):
    if not has_module(backend):
        pytest.skip(f"{backend} not installed")
    model = onnx.load(str(tiny["onnxruntime"]))
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="weights/yolo.data", size_threshold=1024
    )
    out = tmp_path / "ext"
    (out / "weights").mkdir(parents=True)
    onnx.save_model(model, str(out / "yolo.onnx"))
    assert len(check_onnx_external_data(out / "yolo.onnx")) > 20
    from unideploy.testing import scene

    img = scene(np.random.default_rng(2), 90, 120)
    with (
        unideploy.load(tiny["onnxruntime"], backend=backend, conf=0.05) as a,
        unideploy.load(out / "yolo.onnx", backend=backend, conf=0.05) as b,
    ):
        ra, rb = a(img), b(img)
    assert len(ra) > 0
    np.testing.assert_allclose(ra.xyxy, rb.xyxy, atol=1e-4)
    np.testing.assert_array_equal(ra.class_id, rb.class_id)


# ------------------------------------------------------------------------------------------ SHA-256


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sha256_pinning(tiny, tmp_path, backend, monkeypatch):
    model = model_for(tiny, backend)
    digest = sha(model)
    with unideploy.load(model, backend=backend, sha256=digest.upper()) as p:  # case-insensitive
        assert p.spec.imgsz == (64, 64)
    if backend == "openvino":
        with unideploy.load(
            model, sha256=[digest, f"{model.with_suffix('.bin').name}={sha(model.with_suffix('.bin'))}"]
        ):
            pass
        bad_bin = {None: digest, model.with_suffix(".bin").name: "0" * 64}
        with pytest.raises(ModelError, match=r"yolov8n\.bin: SHA-256 is [0-9a-f]{64}, expected 0{64}"):
            unideploy.load(model, sha256=bad_bin)
    import unideploy.runtime.open as opener

    monkeypatch.setattr(
        opener, "get_backend", lambda *a, **k: pytest.fail("the file was parsed before its digest was checked")
    )
    with pytest.raises(ModelError, match=rf"{model.name}: SHA-256 is {digest}, expected f{{64}} \(--model-sha256\)"):
        unideploy.load(model, backend=backend, sha256="f" * 64)
    for bad in ("abc", "g" * 64, "x=" + "0" * 63):
        with pytest.raises(InputError, match="64 hexadecimal digits"):
            unideploy.load(model, sha256=bad)
    with pytest.raises(InputError, match="in the model's folder"):
        verify_sha256(model, {"../../etc/passwd": "0" * 64})


def test_cli_model_sha256(tiny, tmp_path, capsys):
    model = tiny["onnxruntime"]
    import cv2

    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), np.full((40, 50, 3), 90, np.uint8))
    assert main(["predict", str(model), str(img), "--model-sha256", sha(model), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(img), "--model-sha256", "sha256:" + "e" * 64]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SHA-256 is" in err[0] and "e" * 64 in err[0], err
    # serve checks the pin where it starts, before any Ray process or replica exists
    assert main(["serve", str(model), "--model-sha256", "e" * 64]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "SHA-256 is" in err[-1] and "e" * 64 in err[-1], err


def test_native_engine_is_pinned_before_its_runtime_is_needed(tmp_path, monkeypatch):
    """An .om / engine file is executable: pinning refuses a swapped file even where the runtime is missing,
    and a correct file without its runtime is a clear BackendUnavailableError, not a crash."""
    engine = tmp_path / "model.om"
    engine.write_bytes(os.urandom(4096))
    with pytest.raises(ModelError, match="SHA-256 is"):
        unideploy.load(engine, sha256="0" * 64)
    if has_module("ais_bench"):
        pytest.skip("the Ascend runtime is installed here")
    from unideploy.core.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="ais_bench"):
        unideploy.load(engine, sha256=sha(engine))


# ------------------------------------------------------------------------------------------- pickle


@pytest.mark.timeout(300)
def test_cli_does_not_unpickle_a_payload_without_trust_pickle(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    ckpt = tmp_path / "model.pt"
    torch.save({"model": None, "train_args": {"imgsz": 64}, "notes": Payload()}, ckpt)
    img = tmp_path / "a.jpg"
    import cv2

    cv2.imwrite(str(img), np.zeros((16, 16, 3), np.uint8))
    assert main(["predict", str(ckpt), str(img), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "exec" in err and "trust_pickle" in err and not marker.exists()
    with pytest.warns(UserWarning, match="runs any code"):
        rc = main(["predict", str(ckpt), str(img), "--quiet", "--trust-pickle"])
    assert rc == 1  # the checkpoint holds no model; but the flag did reach the loader:
    assert marker.exists(), "--trust-pickle did not reach the torch loader"


# ------------------------------------------------------------------------------------------ fuzzing


def _metadata_model(meta: dict[str, str]) -> bytes:
    m = matmul_model()
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    return m.SerializeToString()


def test_fuzz_spec_reader_and_model_loading(tiny, tmp_path):
    """Mutated ONNX files, arbitrary metadata values, sidecar JSON and OpenVINO metadata.yaml for a fixed budget:
    read_spec / unideploy.load raise only UnideployError subclasses (or succeed)."""
    pytest.importorskip("hypothesis")
    from hypothesis import given
    from hypothesis import strategies as st

    seed = _metadata_model(
        {"names": "{0: 'a', 1: 'b'}", "imgsz": "[64, 64]", "stride": "32", "task": "detect", "author": "Ultralytics"}
    )
    keys = ["names", "imgsz", "stride", "task", "end2end", "batch", "head", "author", "description", "unideploy"]
    values = st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            [
                "[1, 2, 3]",
                "['a', 'b']",
                "{0: 1}",
                "(" * 200,
                "1e400",
                "-5",
                "[0, 0]",
                "{'a': 'b'}",
                "[[1]]",
                "None",
                '{"imgsz": "x"}',
                '{"names": [1]}',
                '{"task": 3}',
                '{"mean": "abc"}',
                "[]",
                "True",
                "'x' * 9",
            ]
        ),
    )
    folder = tmp_path / "fz"
    folder.mkdir()
    xml_dir = tmp_path / "ov"
    if "openvino" in tiny:
        shutil.copytree(tiny["openvino"].parent, xml_dir)

    @st.composite
    def cases(draw):
        kind = draw(st.sampled_from(["meta", "bytes", "sidecar", "yaml"]))
        if kind == "meta":
            return kind, _metadata_model(draw(st.dictionaries(st.sampled_from(keys), values, max_size=4)))
        if kind == "bytes":
            data = bytearray(seed)
            for _ in range(draw(st.integers(1, 4))):
                i = draw(st.integers(0, len(data) - 1))
                op = draw(st.sampled_from(["flip", "cut", "insert"]))
                if op == "flip":
                    data[i] ^= draw(st.integers(1, 255))
                elif op == "cut":
                    del data[i:]
                    if not data:
                        data = bytearray(b"\x08")
                else:
                    data[i:i] = draw(st.binary(min_size=1, max_size=16))
            return kind, bytes(data)
        if kind == "sidecar":
            return kind, draw(
                st.one_of(
                    st.text(max_size=60),
                    st.sampled_from(
                        [
                            '{"imgsz": "abc"}',
                            '{"names": 5}',
                            '{"task": "segment"}',
                            "[1, 2]",
                            '"str"',
                            '{"mean": [1]}',
                            '{"imgsz": [1, 2, 3]}',
                            '{"stride": "x"}',
                            '{"resize": null}',
                            '{"names": {"a": "b"}}',
                            "null",
                        ]
                    ),
                )
            )
        return kind, draw(
            st.one_of(
                st.text(max_size=60),
                st.sampled_from(
                    [
                        "- a\n- b\n",
                        "names: 5\n",
                        "imgsz: abc\n",
                        "a: [\n",
                        "stride: [1]\n",
                        "names: {x: 1}\n",
                        "!!python/object:os.system\n",
                        "task: 3\n",
                        "null\n",
                    ]
                ),
            )
        )

    seen: dict[str, int] = {}

    @fuzz_settings()
    @given(cases())
    def check(case) -> None:
        kind, payload = case
        for f in folder.iterdir():
            f.unlink()
        if kind in ("meta", "bytes"):
            target = folder / "m.onnx"
            target.write_bytes(payload)
        elif kind == "sidecar":
            target = folder / "m.onnx"
            target.write_bytes(seed)
            (folder / "m.json").write_text(payload)
        else:
            if "openvino" not in tiny:
                return
            target = xml_dir / tiny["openvino"].name
            (xml_dir / "metadata.yaml").write_text(payload)
        for fn in (lambda: unideploy.read_spec(target), lambda: unideploy.load(target).close()):
            try:
                fn()
                seen["ok"] = seen.get("ok", 0) + 1
            except UnideployError as e:
                seen[type(e).__name__] = seen.get(type(e).__name__, 0) + 1

    check()
    assert seen.get("ModelError", 0) + seen.get("SpecError", 0) > 0, seen


def test_backend_options_are_declared_and_unknown_ones_refused(tiny):
    """Each backend declares its options; a misspelt one is refused with the valid list, and the CLI's shared
    options (--threads, --precision, --trust-pickle) are ignored by a backend that does not use them."""
    import dataclasses

    from unideploy.core.errors import OptionError
    from unideploy.runtime.backends.registry import get_backend, list_backends

    for name in list_backends():
        cls = get_backend(name)
        assert cls.option_names() == tuple(f.name for f in dataclasses.fields(cls.Options)), name
    with pytest.raises(OptionError, match=r"thread is not a backend \(onnxruntime\) option; valid: .*inter_threads.*threads"):
        unideploy.load(tiny["onnxruntime"], thread=2)
    with unideploy.load(tiny["onnxruntime"], trust_pickle=True, threads=1) as p:
        assert p.spec.imgsz == (64, 64)


def test_onnx_file_is_parsed_once_when_opened(tiny, monkeypatch):
    """One read of the ONNX file gives the spec's metadata and the external-data check before ORT loads it."""
    import unideploy.runtime.backends.onnxruntime as ort_backend

    calls = []
    real = ort_backend.read_onnx
    monkeypatch.setattr(ort_backend, "read_onnx", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(ort_backend, "read_onnx_metadata", lambda p: pytest.fail("the file was parsed a second time"))
    with unideploy.load(tiny["onnxruntime"]) as p:
        assert p.spec.imgsz == (64, 64)
    assert len(calls) == 1
