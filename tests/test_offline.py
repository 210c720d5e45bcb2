"""Three-stage offline mode: preprocess -> infer -> postprocess equals one-shot predict; file errors name the file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import unideploy
from conftest import has_module
from unideploy.tools import offline
from unideploy.cli.main import main
from unideploy.core.errors import InputError


def _assert_identical(ours, ref, where):
    assert len(ours) == len(ref), f"{where}: {len(ours)} vs {len(ref)} boxes"
    np.testing.assert_array_equal(ours.xyxy, ref.xyxy, err_msg=where)
    np.testing.assert_array_equal(ours.confidence, ref.confidence, err_msg=where)
    np.testing.assert_array_equal(ours.class_id, ref.class_id, err_msg=where)
    assert ours.image_shape == ref.image_shape, where


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt,outfmt,backend", [("npy", "npy", "onnxruntime"), ("bin", "bin", "onnxruntime"), ("bin", "npy", "openvino")]
)
def test_three_stages_equal_predict(yolo_models, image_dir, tmp_path, fmt, outfmt, backend):
    """preprocess -> infer -> postprocess (through the CLI) gives exactly the detections of predict."""
    if backend == "openvino" and not has_module("openvino"):
        pytest.skip("openvino not installed")
    model = yolo_models["yolo11n"]["onnx" if backend == "onnxruntime" else "openvino"]
    files = sorted(image_dir.iterdir())
    with unideploy.load(model, backend=backend, conf=0.05, in_model_preprocess=False) as pred:  # host float input
        ref = dict(zip([f.name for f in files], pred(files)))
    pre, out = tmp_path / "pre", tmp_path / "out"
    assert (
        main(["preprocess", str(model), str(image_dir), "--out", str(pre), "--format", fmt, "--backend", backend]) == 0
    )
    manifest = json.loads((pre / "manifest.json").read_text())
    assert len(manifest["items"]) == len(files) and not manifest["skipped"]
    first = manifest["items"][0]
    assert first["dtype"] == "float32" and first["shape"] == [1, 3, 256, 320]
    assert set(first["letterbox"]) == {"orig_shape", "new_unpad", "pad", "gain"}
    assert (pre / f"{first['stem']}.{fmt}").is_file()
    assert (
        main(
            [
                "infer",
                str(model),
                "--input",
                str(pre),
                "--output",
                str(out),
                "--outfmt",
                outfmt,
                "--backend",
                backend,
                "--output-dirname",
                "run1",
            ]
        )
        == 0
    )
    run = out / "run1"
    assert (run / f"{first['stem']}_0.{outfmt}").is_file()
    js = tmp_path / "dets.json"
    assert (
        main(
            [
                "postprocess",
                str(model),
                "--input",
                str(run),
                "--manifest",
                str(pre / "manifest.json"),
                "--conf",
                "0.05",
                "--save-json",
                str(js),
                "--save-txt",
                str(tmp_path / "txt"),
            ]
        )
        == 0
    )
    results = offline.postprocess(model, run, pre / "manifest.json", conf=0.05)
    assert [n for n, _ in results] == [f.name for f in files]
    total = 0
    for name, det in results:
        _assert_identical(det, ref[name], f"{backend}/{fmt}->{outfmt}/{name}")
        total += len(det)
    assert total > 5 * len(files), "too few boxes to make the comparison meaningful"
    records = json.loads(js.read_text())
    assert len(records) == total
    assert len(list((tmp_path / "txt").glob("*.txt"))) == len(files)


@pytest.mark.slow
def test_default_subfolder_txt_outputs_and_images(yolo_models, image_dir, tmp_path):
    """Date-time subfolder by default; txt outputs postprocess to the same boxes; annotated images are drawn."""
    model = yolo_models["yolov8n"]["onnx"]
    files = sorted(image_dir.iterdir())[:4]
    src = tmp_path / "src"
    src.mkdir()
    for f in files:
        shutil.copy(f, src / f.name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    mpath = offline.preprocess(model, src, tmp_path / "pre")
    doc = offline.read_manifest(mpath)
    assert [s["source"].endswith("broken.jpg") for s in doc["skipped"]] == [True]
    rep = offline.infer(model, [tmp_path / "pre"], tmp_path / "out", outfmt="txt")
    assert re.fullmatch(r"\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d", rep.output_dir.name)
    res = offline.postprocess(model, rep.output_dir, mpath, save_img=str(tmp_path / "img"))
    with unideploy.load(model) as pred:
        for (name, det), f in zip(res, files):
            ref = pred(f)
            assert name == f.name
            # txt keeps 9 significant digits: boxes agree to well under a pixel, same classes
            assert len(det) == len(ref)
            np.testing.assert_allclose(det.xyxy, ref.xyxy, atol=1e-3)
            np.testing.assert_array_equal(det.class_id, ref.class_id)
    assert len(list((tmp_path / "img").iterdir())) == len(files)


# ------------------------------------------------------------------------ a two-input model built by hand


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory) -> Path:
    """ONNX model with inputs a, b of shape (N, 2, 3) float32 and outputs a+b, a*b (dynamic batch)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2, 3])
    s = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 2, 3])
    p = helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["N", 2, 3])
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])],
        "two",
        [a, b],
        [s, p],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path_factory.mktemp("two") / "two.onnx"
    onnx.save(m, str(path))
    return path


def _write_pair(tmp_path: Path, n: int, fmt: str = "npy") -> tuple[Path, Path, dict]:
    rng = np.random.default_rng(0)
    da, db = tmp_path / "a", tmp_path / "b"
    data = {}
    for i in range(n):
        x, y = rng.normal(size=(1, 2, 3)).astype(np.float32), rng.normal(size=(1, 2, 3)).astype(np.float32)
        offline.save_tensor(da / f"s{i:02d}.{fmt}", x)
        offline.save_tensor(db / f"s{i:02d}.{fmt}", y if i % 2 else y[0])  # with and without the batch axis
        data[f"s{i:02d}"] = (x, y)
    return da, db, data


@pytest.mark.parametrize("fmt,bs", [("npy", 3), ("bin", 1), ("bin", 4)])
def test_multi_input_batches_and_names(two_input_model, tmp_path, fmt, bs):
    da, db, data = _write_pair(tmp_path, 7, fmt)
    rep = offline.infer(two_input_model, f"{da},{db}", tmp_path / "out", batchsize=bs, output_dirname="r")
    assert rep.batches == -(-7 // bs)
    index = json.loads((tmp_path / "out" / "r" / "outputs.json").read_text())
    assert [o["name"] for o in index["outputs"]] == ["sum", "prod"]
    for stem, (x, y) in data.items():
        s = np.load(tmp_path / "out" / "r" / f"{stem}_0.npy")
        p = np.load(tmp_path / "out" / "r" / f"{stem}_1.npy")
        np.testing.assert_array_equal(s, x + y)
        np.testing.assert_array_equal(p, x * y)


def test_bin_with_dynamic_dims_needs_shape(tmp_path):
    """A .bin for an input whose non-batch dims are dynamic is refused, naming the file."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "K"])
    o = helper.make_tensor_value_info("o", TensorProto.FLOAT, ["N", "K"])
    m = helper.make_model(
        helper.make_graph([helper.make_node("Neg", ["a"], ["o"])], "g", [a], [o]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "dyn.onnx"))
    offline.save_tensor(tmp_path / "in" / "x.bin", np.zeros((1, 5), np.float32))
    with pytest.raises(InputError, match=r"x\.bin: a \.bin file needs the input shape"):
        offline.infer(tmp_path / "dyn.onnx", [tmp_path / "in"], tmp_path / "out")
    # npy carries its shape: fine
    (tmp_path / "in" / "x.bin").unlink()
    offline.save_tensor(tmp_path / "in" / "x.npy", np.ones((1, 5), np.float32))
    rep = offline.infer(tmp_path / "dyn.onnx", [tmp_path / "in"], tmp_path / "out", output_dirname="d")
    np.testing.assert_array_equal(np.load(rep.output_dir / "x_0.npy"), -np.ones((1, 5), np.float32))


def _expect(exc_match: str, *args, **kwargs):
    with pytest.raises(InputError, match=exc_match) as ei:
        offline.infer(*args, **kwargs)
    assert "\n" not in str(ei.value)
    return ei.value


def test_infer_errors_name_the_file(two_input_model, tmp_path):
    da, db, _ = _write_pair(tmp_path, 3, "bin")
    out = tmp_path / "out"
    # truncated .bin
    f = da / "s01.bin"
    f.write_bytes(f.read_bytes()[:-4])
    _expect(r"s01\.bin: expected 24 bytes .*has 20 bytes \(truncated", two_input_model, [da, db], out)
    f.write_bytes(f.read_bytes() + b"\0" * 12)
    _expect(r"s01\.bin: expected 24 bytes .*too long", two_input_model, [da, db], out)
    f.unlink()
    # unmatched names across folders
    _expect(r"same names; unmatched: s01", two_input_model, [da, db], out)
    offline.save_tensor(da / "s01.npy", np.zeros((1, 3, 2), np.float32))
    # shape mismatch in an .npy
    _expect(
        r"s01\.npy: input 'a' expects one sample of \(\?,2,3\) float32 \(batch axis 1\), the file holds \(1, 3, 2\)",
        two_input_model,
        [da, db],
        out,
    )
    offline.save_tensor(da / "s01.npy", np.zeros((1, 2, 3), np.float64))
    _expect(r"s01\.npy: expected dtype float32, the file holds float64", two_input_model, [da, db], out)
    offline.save_tensor(da / "s01.npy", np.zeros((1, 2, 3), np.float32))
    # two files with one stem
    offline.save_tensor(da / "s02.npy", np.zeros((1, 2, 3), np.float32))
    _expect(r"two tensor files share the name 's02'", two_input_model, [da, db], out)
    (da / "s02.npy").unlink()
    # wrong number of folders, bad flags
    _expect(r"model has 2 input\(s\) \['a', 'b'\]; --input gave 1 folder", two_input_model, [da], out)
    _expect(r"--outfmt must be one of npy, bin, txt; got 'csv'", two_input_model, [da, db], out, outfmt="csv")
    _expect(r"--batchsize must be a positive integer, got 0", two_input_model, [da, db], out, batchsize=0)
    _expect(r"--output-dirname must be a plain folder name", two_input_model, [da, db], out, output_dirname="../x")
    _expect(r"nope: expected a folder of \.npy/\.bin tensor files", two_input_model, [da, tmp_path / "nope"], out)
    # and it all works once repaired
    assert len(offline.infer(two_input_model, [da, db], out).stems) == 3


def test_cli_errors_are_one_line(two_input_model, tmp_path, capsys):
    da, db, _ = _write_pair(tmp_path, 2, "bin")
    (da / "s00.bin").write_bytes(b"\0" * 7)
    assert main(["infer", str(two_input_model), "--input", f"{da},{db}", "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s00.bin" in err[0] and "truncated" in err[0]
    assert (
        main(["postprocess", str(two_input_model), "--input", str(tmp_path), "--manifest", str(tmp_path / "m.json")])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "m.json: expected a manifest JSON written by 'unideploy preprocess'" in err


@pytest.mark.slow
def test_fixed_batch_model_refuses_larger_batch_and_missing_output(yolo_models, image_dir, tmp_path):
    model = yolo_models["yolov8n"]["onnx"]
    files = sorted(image_dir.iterdir())[:2]
    mpath = offline.preprocess(model, files, tmp_path / "pre", fmt="bin")
    with pytest.raises(InputError, match=r"fixed batch of 1; --batchsize 2 given"):
        offline.infer(model, [tmp_path / "pre"], tmp_path / "out", batchsize=2)
    rep = offline.infer(model, [tmp_path / "pre"], tmp_path / "out", outfmt="bin", output_dirname="x")
    # outputs made by another tool (no outputs.json): the model gives the output shapes
    (rep.output_dir / "outputs.json").unlink()
    assert len(offline.postprocess(model, rep.output_dir, mpath)) == 2
    stem = offline.read_manifest(mpath)["items"][1]["stem"]
    out_file = rep.output_dir / f"{stem}_0.bin"
    out_file.write_bytes(out_file.read_bytes()[:100])
    with pytest.raises(InputError, match=re.escape(out_file.name) + r": expected \d+ bytes"):
        offline.postprocess(model, rep.output_dir, mpath)
    out_file.unlink()
    with pytest.raises(InputError, match=f"expected output file {stem}_0"):
        offline.postprocess(model, rep.output_dir, mpath)
