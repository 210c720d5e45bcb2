"""The command line's contract: every bad flag value is one stderr line (flag, expected, given), exit non-zero, no
traceback, nothing written; outputs are checked before work starts; the habits users expect (global flags after the
subcommand, per-image lines, examples in --help, files with the umask's mode, one precision vocabulary)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unideploy.cli.main import COMMANDS, main, parse_args

ASSETS = Path(__file__).resolve().parents[1] / "src" / "unideploy" / "assets" / "demo"
DEMO = ASSETS / "shapes_yolov8.onnx"
VAL = ASSETS / "val"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``unideploy argv`` in this process: (exit status, stdout, stderr). Any exception but SystemExit fails."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture()
def images(tmp_path) -> Path:
    src = tmp_path / "img"
    src.mkdir()
    for f in sorted((VAL / "images").iterdir())[:3]:
        (src / f.name).write_bytes(f.read_bytes())
    return src


# -- one table: subcommand x flag x bad value -----------------------------------------------------------------------
M, D = str(DEMO), str(VAL / "data.yaml")
BAD_VALUES = [
    # (argv before the flag, flag, bad value, what the message says is expected)
    *[(["predict", M, "x.jpg"], f, v, e) for f, v, e in [
        ("--conf", "2", "between 0 and 1"), ("--conf", "abc", "between 0 and 1"), ("--iou", "-0.5", "between 0 and 1"),
        ("--max-det", "0", "positive integer"), ("--max-det", "1.5", "positive integer"),
        ("--classes", "a", "class indices"), ("--classes", "1,-2", "class indices"),
        ("--vid-stride", "0", "positive integer"), ("--threads", "-3", "non-negative integer"),
        ("--batch", "0", "positive integer"), ("--precision", "fp64", "fp32, fp16 or bf16"),
        ("--precision", "int8", "fp32, fp16 or bf16"), ("--ray-actors", "0", "positive integer")]],
    *[(["eval", M, "--data", D], f, v, e) for f, v, e in [
        ("--conf", "2", "between 0 and 1"), ("--iou", "5", "between 0 and 1"), ("--max-det", "0", "positive integer"),
        ("--threads", "-3", "non-negative integer"), ("--precision", "x", "fp32")]],
    *[(["bench", M], f, v, e) for f, v, e in [
        ("--batch", "0", "positive integers"), ("--warmup", "-1", "non-negative integer"),
        ("--loop", "0", "positive integer"), ("--requests", "0", "positive integer"),
        ("--threads", "-3", "non-negative integer"), ("--precision", "f64", "fp32"),
        ("--mode", "fast", "choose from")]],
    *[(["compare", M, M, "--random"], f, v, e) for f, v, e in [
        ("--samples", "0", "positive integer"), ("--atol", "-1", "non-negative number"),
        ("--rtol", "nan", "non-negative number"), ("--conf", "1.5", "between 0 and 1"),
        ("--max-det", "0", "positive integer"), ("--min-cosine", "2", "between 0 and 1"),
        ("--max-shift-px", "-4", "non-negative number"), ("--threads", "-1", "non-negative integer"),
        ("--level", "pixel", "choose from")]],
    *[(["quantize", M, "--calib", "x/"], f, v, e) for f, v, e in [
        ("--samples", "0", "positive integer"), ("--max-drop", "5", "between 0 and 1"),
        ("--speed-runs", "0", "positive integer")]],
    *[(["export", M], f, v, e) for f, v, e in [("--batch", "0", "positive integer"), ("--opset", "x", "positive")]],
    *[(["preprocess", M, "x.jpg", "--out", "o"], f, v, e) for f, v, e in [
        ("--vid-stride", "0", "positive integer"), ("--format", "png", "choose from")]],
    *[(["infer", M, "--input", "i", "--output", "o"], f, v, e) for f, v, e in [
        ("--batchsize", "0", "positive integer"), ("--threads", "-2", "non-negative integer"),
        ("--outfmt", "csv", "choose from")]],
    *[(["postprocess", M, "--input", "i", "--manifest", "m.json"], f, v, e) for f, v, e in [
        ("--conf", "7", "between 0 and 1"), ("--max-det", "-1", "positive integer"), ("--classes", "x", "class")]],
    *[(["pipeline", "run", "p.yaml", "x.jpg"], f, v, e) for f, v, e in [("--vid-stride", "0", "positive integer")]],
    *[(["track", M, "clip.mp4"], f, v, e) for f, v, e in [
        ("--conf", "2", "between 0 and 1"), ("--iou", "x", "between 0 and 1"), ("--max-det", "0", "positive integer"),
        ("--classes", "a", "class indices"), ("--vid-stride", "0", "positive integer"),
        ("--reconnect", "-1", "non-negative integer"), ("--drop-policy", "oldest", "choose from")]],
    *[(["serve", M], f, v, e) for f, v, e in [
        ("--port", "0", "positive integer"), ("--conf", "3", "between 0 and 1"), ("--replicas", "0", "positive"),
        ("--max-upload-mb", "-1", "positive number"), ("--num-gpus", "-1", "non-negative number")]],
]


@pytest.mark.parametrize("head,flag,value,expected", BAD_VALUES,
                         ids=[f"{h[0]}{f}={v}" for h, f, v, _ in BAD_VALUES])
def test_bad_flag_value_is_one_line(head, flag, value, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run([*head, flag, value], capsys)
    assert_one_error(code, err, flag, expected, repr(value).strip("'").strip('"') if value != "nan" else "nan")
    assert out == ""
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a folder


#: the subcommands this contract covers (a new one is added here with its rows in the tables above)
CONTRACT = ("predict", "bench", "compare", "preprocess", "infer", "postprocess", "pipeline", "serve", "eval", "demo",
            "export", "quantize", "track")


def test_every_subcommand_is_in_the_table():
    covered = {h[0] for h, *_ in BAD_VALUES}
    assert covered >= set(CONTRACT) - {"demo"}  # demo has no value flags (its --out is checked below)
    assert set(CONTRACT) <= set(COMMANDS)


# -- output paths are checked before the work starts ---------------------------------------------------------------
OUT_FLAGS = [
    (["predict", M, "{img}"], "--save-json", "dir"), (["predict", M, "{img}"], "--save-jsonl", "dir"),
    (["predict", M, "{img}"], "--save-video", "dir"), (["predict", M, "{img}"], "--save-img", "file"),
    (["predict", M, "{img}"], "--save-txt", "file"), (["predict", M, "{img}"], "--save-json", "under-file"),
    (["eval", M, "--data", D], "--json", "dir"), (["eval", M, "--data", D], "--save-predictions", "dir"),
    (["bench", M, "--no-startup"], "--json", "dir"), (["compare", M, M, "--random"], "--json", "dir"),
    (["quantize", M, "--calib", "{img}"], "--json", "dir"), (["demo"], "--out", "file"),
    (["preprocess", M, "{img}", "--out", "t"], "--manifest", "dir"),
    (["track", M, "{img}"], "--save-mot", "dir"), (["track", M, "{img}"], "--save-video", "under-file"),
]


@pytest.mark.parametrize("head,flag,kind", OUT_FLAGS, ids=[f"{h[0]}{f}-{k}" for h, f, k in OUT_FLAGS])
def test_output_path_of_the_wrong_kind_fails_before_work(head, flag, kind, images, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "a_file").write_text("keep\n")
    (work / "a_dir").mkdir()
    target = {"dir": "a_dir", "file": "a_file", "under-file": "a_file/x.json"}[kind]
    before = sorted(p.name for p in work.rglob("*"))
    argv = [str(a).replace("{img}", str(images)) for a in head]
    code, _, err = run([*argv, flag, target], capsys)
    assert_one_error(code, err, flag, target)
    assert sorted(p.name for p in work.rglob("*")) == before
    assert (work / "a_file").read_text() == "keep\n"


# -- property: random command lines never give a traceback ---------------------------------------------------------
WORDS = ["predict", "eval", "bench", "compare", "export", "quantize", "preprocess", "infer", "postprocess",
         "pipeline", "run", "check", "--conf", "--iou", "--max-det", "--classes", "--threads", "--batch",
         "--precision", "--save-json", "--save-img", "--data", "--samples", "--atol", "--loop", "--warmup",
         "--debug-no", "-q", "-v", "--help-no", "--random", "--level", "--mode", "--vid-stride", "--imgsz",
         "missing.onnx", "junk.onnx", "0", "-1", "2", "0.5", "nan", "abc", "1,2", "fp32", "f16", "int8", "", "--",
         "a b", "ü", "x.jpg", "--calib", "--input", "--output", "--manifest", "--to", "--out"]


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(WORDS), min_size=0, max_size=8))
def test_random_command_lines_never_raise(argv, tmp_path_factory, capsys):
    work = tmp_path_factory.mktemp("argv")
    (work / "junk.onnx").write_bytes(b"not a model")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code, _, err = run(argv, capsys)  # an exception other than SystemExit fails the test
    finally:
        os.chdir(cwd)
    assert isinstance(code, int)
    assert "Traceback" not in err


# -- habits ---------------------------------------------------------------------------------------------------------
def test_global_flags_after_the_subcommand():
    for argv in (["--debug", "predict", M, "x"], ["predict", M, "x", "--debug"]):
        assert parse_args(argv).debug is True
    for argv in (["-q", "predict", M, "x"], ["predict", M, "x", "-q"], ["demo", "--quiet"], ["demo", "-q"],
                 ["-q", "bench", M], ["bench", M, "-q"], ["pipeline", "check", "p.yaml", "-q"]):
        args = parse_args(argv)
        assert args.quiet is True and args.verbose is False, argv
    assert parse_args(["eval", M, "--data", D, "-v"]).verbose is True
    assert parse_args(["demo"]).quiet is False


def test_debug_after_the_subcommand_shows_the_traceback(images, tmp_path):
    from unideploy.core.errors import UnideployError

    with pytest.raises(UnideployError) as e:  # raised, not printed as one line: --debug reached main()
        main(["predict", str(tmp_path / "missing.onnx"), str(images), "--debug"])
    assert "missing.onnx" in str(e.value)


@pytest.mark.parametrize("command", CONTRACT)
def test_help_ends_with_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    tail = text[text.rindex("examples:"):].splitlines()[1:]
    examples = [ln.strip() for ln in tail if ln.strip().startswith(("unideploy ", "curl "))]
    assert 2 <= len(examples) <= 4, text
    assert all(ln.split()[1] == command or ln.startswith("curl") for ln in examples), examples


@pytest.mark.parametrize("spelling,canonical", [("fp32", "fp32"), ("f32", "fp32"), ("FP16", "fp16"), ("f16", "fp16"),
                                                ("bf16", "bf16"), ("float32", "fp32")])
def test_one_precision_vocabulary(spelling, canonical):
    for argv in (["predict", M, "x", "--precision", spelling], ["eval", M, "--data", D, "--precision", spelling],
                 ["bench", M, "--precision", spelling]):
        assert parse_args(argv).precision == canonical


def test_precision_label_and_canonical_names():
    from unideploy.core.errors import OptionError
    from unideploy.core.precision import canonical_precision, precision_label

    assert [canonical_precision(s) for s in ("f32", "fp16", "i8", "BF16")] == ["fp32", "fp16", "int8", "bf16"]
    assert precision_label("fp32", "bf16") == "fp32 (bf16)" and precision_label("fp32", "f32") == "fp32"
    assert precision_label("int8", "bf16") == "int8 (bf16)" and precision_label("fp16", None) == "fp16"
    with pytest.raises(OptionError, match="precision must be fp32, fp16, bf16 or int8 .*got 'fp64'"):
        canonical_precision("fp64")


def test_predict_prints_a_line_per_image_and_a_hint(images, capsys):
    code, out, err = run(["predict", M, images], capsys)
    assert code == 0, err
    lines = err.splitlines()
    per_image = [ln for ln in lines if ln.startswith("image ")]
    names = sorted(p.name for p in images.iterdir())
    assert [ln.split()[1] for ln in per_image] == [f"{i}/3" for i in (1, 2, 3)]
    assert [ln.split()[2] for ln in per_image] == names
    first = per_image[0]
    w, h = first.split()[3].rstrip(":").split("x")
    import cv2

    assert (int(h), int(w)) == cv2.imread(str(images / names[0])).shape[:2]
    assert all(ln.endswith(" ms") for ln in per_image[1:])
    assert any(ln.startswith("3 image(s), ") for ln in lines)
    assert any(ln.startswith("nothing saved: add --save-json FILE") for ln in lines)
    assert "predict:" not in err  # no progress bar where stderr is not a terminal


def test_predict_quiet_prints_nothing(images, capsys):
    code, out, err = run(["predict", M, images, "-q"], capsys)
    assert code == 0 and out == "" and err == ""


def test_outputs_get_the_umask_mode(images, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, _, err = run(["predict", M, images, "-q", "--save-json", tmp_path / "p.json",
                            "--save-img", tmp_path / "img", "--save-txt", tmp_path / "txt"], capsys)
        assert code == 0, err
        files = [tmp_path / "p.json", *(tmp_path / "img").iterdir(), *(tmp_path / "txt").iterdir()]
        assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}
        os.umask(0o077)
        from unideploy.core.sinks import atomic_write_json

        atomic_write_json(tmp_path / "private.json", {})
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_skipped_lines_name_the_file_once(capsys):
    from unideploy.cli.common import report_failures, short_reason

    assert short_reason("bad.jpg", "mixed/bad.jpg: expected an image, got text") == "expected an image, got text"
    assert short_reason("bad.jpg", "decoder said: no") == "decoder said: no"
    assert report_failures([("bad.jpg", "/x/mixed/bad.jpg: expected an image")]) == 1
    err = capsys.readouterr().err
    assert err.count("bad.jpg") == 1 and "expected an image" in err


def test_bench_errors_once(tmp_path, capsys):
    (tmp_path / "fake.onnx").write_bytes(b"not a model at all")
    code, out, err = run(["bench", tmp_path / "fake.onnx", "--no-startup", "--loop", "2", "-q"], capsys)
    assert_one_error(code, err, "fake.onnx")
    assert out == ""  # no empty table


def test_bench_batch_on_a_fixed_batch_model(capsys):
    code, out, err = run(["bench", M, "--batch", "4", "--no-startup", "--loop", "2", "-q"], capsys)
    assert_one_error(code, err, "--batch", "fixed", "got 4")
    assert out == ""


def test_quantize_says_slower():
    from unideploy.tools.quantize.report import _speed_word

    assert _speed_word(10.0, 21.7) == "2.17x slower"
    assert _speed_word(21.7, 10.0) == "2.17x faster"


def test_load_names_the_python_argument():
    import unideploy
    from unideploy.core.errors import OptionError

    with pytest.raises(OptionError) as e:
        unideploy.load(DEMO, conf=2)
    assert str(e.value).startswith("conf ") and "--conf" not in str(e.value)


def test_classes_beyond_the_model_are_refused(images, capsys):
    code, _, err = run(["predict", M, images, "--classes", "9"], capsys)
    assert_one_error(code, err, "--classes", "0..5", "9")


# -- compare: tolerances follow the compute precision ---------------------------------------------------------------
@pytest.fixture(scope="module")
def perturbed(tmp_path_factory) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    m = onnx.load(str(DEMO))
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.ndim == 4:  # conv weights, 2% multiplicative noise
            noisy = a * (1 + 0.02 * rng.standard_normal(a.shape)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    path = tmp_path_factory.mktemp("perturbed") / "perturbed.onnx"
    onnx.save(m, str(path))
    return path


def test_compare_tolerances_follow_the_compute_precision(perturbed):
    pytest.importorskip("openvino")
    from unideploy.tools.compare import compare

    images = sorted((VAL / "images").iterdir())[:12]
    same = compare(f"{DEMO}@onnxruntime", f"{DEMO}@openvino", images)
    limits = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 5e-2}
    assert same.thresholds.atol == same.thresholds.rtol == limits[same.precision]
    assert same.passed, same.table()  # the same FP32 model passes by default, bf16 CPU or not
    assert f"for {same.precision} compute" in same.table()
    other = compare(f"{DEMO}@onnxruntime", f"{perturbed}@openvino", images)
    assert not other.passed, other.table()  # perturbed weights still fail at the same limits
    assert other.precision == same.precision
    fixed = compare(f"{DEMO}@onnxruntime", f"{DEMO}@openvino", images, level="tensor", atol=1e-3, rtol=1e-3)
    assert fixed.thresholds.atol == 1e-3  # a limit the caller sets is used as given
