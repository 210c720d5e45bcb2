"""predict: CLI outputs (COCO JSON, YOLO txt, images), bad inputs, and the torch-free core."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import unideploy
from conftest import REPO
from unideploy.core.errors import BackendUnavailableError, InputError, ModelError, SourceError
from unideploy.runtime.backends.base import Backend
from unideploy.runtime.backends.registry import BACKENDS

CLI = [sys.executable, "-m", "unideploy"]


def run_cli(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def onnx_model(yolo_models) -> Path:
    return yolo_models["yolov8n"]["onnx"]


def test_cli_outputs(onnx_model, image_dir, tmp_path):
    proc = run_cli("predict", onnx_model, image_dir, "--conf", "0.3", "--save-json", tmp_path / "r.json",
                   "--save-txt", tmp_path / "txt", "--save-img", tmp_path / "img")
    assert proc.returncode == 0, proc.stderr
    files = sorted(image_dir.iterdir())
    records = json.loads((tmp_path / "r.json").read_text())
    with unideploy.load(onnx_model, conf=0.3) as pred:
        dets = pred(files)
    assert len(records) == sum(len(d) for d in dets) > 0
    for r in records:
        assert set(r) == {"image_id", "file_name", "category_id", "bbox", "score"}
        assert files[r["image_id"] - 1].name == r["file_name"]  # 1-based position in sorted order
        assert 1 <= r["category_id"] <= len(pred.names)          # class index + 1
    first = next(i for i, d in enumerate(dets) if len(d))
    rec = [r for r in records if r["image_id"] == first + 1]
    d = dets[first]
    assert rec[0]["bbox"] == pytest.approx([*d.xyxy[0, :2], *(d.xyxy[0, 2:] - d.xyxy[0, :2])], abs=1e-2)
    assert rec[0]["category_id"] == d.class_id[0] + 1
    txts = sorted((tmp_path / "txt").glob("*.txt"))
    assert len(txts) == len(files)
    line = (tmp_path / "txt" / f"{files[first].stem}.txt").read_text().splitlines()[0].split()
    assert int(line[0]) == d.class_id[0] and len(line) == 6 and all(0 <= float(v) <= 1 for v in line[1:5])
    assert len(list((tmp_path / "img").iterdir())) == len(files)


def test_folder_with_bad_files_processes_all_good_ones(onnx_model, image_dir, tmp_path):
    src = tmp_path / "mixed"
    shutil.copytree(image_dir, src)
    good = sorted(p.name for p in src.iterdir())
    data = (src / good[0]).read_bytes()
    (src / "zz_truncated.jpg").write_bytes(data[: len(data) // 2])
    (src / "zz_text.jpg").write_text("this is not an image\n")
    (src / "zz_empty.png").write_bytes(b"")
    out = tmp_path / "r.json"
    proc = run_cli("predict", onnx_model, src, "--save-json", out, "--save-txt", tmp_path / "txt", "--conf", "0.3")
    assert proc.returncode == 1  # not every file succeeded
    for name in ("zz_truncated.jpg", "zz_text.jpg", "zz_empty.png"):
        assert name in proc.stderr
    assert "3 file(s) skipped" in proc.stderr
    assert "truncated" in proc.stderr and "empty" in proc.stderr
    written = {p.stem for p in (tmp_path / "txt").glob("*.txt")}
    assert written == {Path(g).stem for g in good}
    assert json.loads(out.read_text())  # the JSON was written despite the failures


BAD = [
    ("missing file", lambda t, m: ["predict", m, t / "nope.jpg"], "no such file"),
    ("empty folder", lambda t, m: ["predict", m, t], "found none"),
    ("model not a model", lambda t, m: ["predict", t / "fake.onnx", t / "a.jpg"], "ONNX"),
    ("missing model", lambda t, m: ["predict", t / "missing.onnx", t / "a.jpg"], "model file not found"),
    ("imgsz mismatch", lambda t, m: ["predict", m, t / "a.jpg", "--imgsz", "640"], "fixed at"),
    ("unknown backend", lambda t, m: ["predict", m, t / "a.jpg", "--backend", "nosuch"], "valid backends"),
    ("bad conf", lambda t, m: ["predict", m, t / "a.jpg", "--conf", "2"], "error: argument --conf: expected a number between 0 and 1, got '2'"),
    ("bad device", lambda t, m: ["predict", m, t / "a.jpg", "--device", "cuda:0"], "available providers"),
]


@pytest.mark.parametrize("case,argv,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_one_clear_line(onnx_model, tmp_path, case, argv, needle):
    work = tmp_path / "w"
    work.mkdir()
    if case != "empty folder":
        import cv2

        cv2.imwrite(str(work / "a.jpg"), np.full((64, 64, 3), 127, np.uint8))
    (work / "fake.onnx").write_text("not a model at all")
    if case == "empty folder":
        (work / "notes.txt").write_text("no images here")
    proc = run_cli(*argv(work, onnx_model))
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert needle in line, line


def test_single_text_file_named_jpg_is_an_error(onnx_model, tmp_path):
    f = tmp_path / "x.jpg"
    f.write_text("hello")
    proc = run_cli("predict", onnx_model, f)
    assert proc.returncode == 1
    assert "x.jpg" in proc.stderr and "decode" in proc.stderr


def test_debug_shows_traceback(onnx_model, tmp_path):
    proc = run_cli("--debug", "predict", onnx_model, tmp_path / "nope.jpg")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_runtime_not_installed_names_the_extra(monkeypatch):
    class FakeBackend(Backend):
        name = "fakert"
        runtime_module = "surely_not_an_installed_module_xyz"
        extra = "fakert"
        suffixes = (".fake",)

        @classmethod
        def open(cls, path, device=None, **options):
            cls.require()

    monkeypatch.setattr(BACKENDS, "_targets", dict(BACKENDS._targets))  # restored after the test
    BACKENDS.register("fakert", FakeBackend)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'unideploy\[fakert\]'"):
        FakeBackend.open("x.fake")
    assert "fakert" not in unideploy.list_backends(available_only=True)


def test_api_errors_are_typed(onnx_model, tmp_path):
    with pytest.raises(ModelError):
        unideploy.load(tmp_path / "missing.onnx")
    with pytest.raises(SourceError):
        with unideploy.load(onnx_model) as p:
            list(p.stream(tmp_path))
    with pytest.raises(InputError, match=r"input 'images' expects \(1,3,320,320\) float32, got \(1, 320, 320, 3\) uint8"):
        with unideploy.load(onnx_model) as p:
            p.session.run(np.zeros((1, 320, 320, 3), np.uint8))


def test_core_predict_does_not_import_torch(onnx_model, image_dir):
    code = textwrap.dedent(f"""
        import sys, unideploy
        assert "torch" not in sys.modules
        with unideploy.load({str(onnx_model)!r}) as p:
            dets = p({str(sorted(image_dir.iterdir())[0])!r})
        from unideploy.cli.main import main
        main(["predict", {str(onnx_model)!r}, {str(image_dir)!r}, "--quiet"])
        heavy = sorted(m for m in ("torch", "torchvision", "ultralytics", "openvino", "tensorflow") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_help_works_and_is_light():
    code = "import sys; from unideploy.cli.main import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\nprint(sorted(m for m in ('onnxruntime','cv2','torch','openvino') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "predict" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    proc = run_cli("predict", "--help")
    assert proc.returncode == 0 and "--save-json" in proc.stdout


def test_single_path_and_list_agree(onnx_model, image_dir):
    files = sorted(image_dir.iterdir())[:3]
    with unideploy.load(onnx_model, conf=0.1) as p:
        one = [p(f) for f in files]
        many = p(files)
        streamed = [o.result for o in p.stream(files)]
    for a, b, c in zip(one, many, streamed):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        np.testing.assert_array_equal(a.xyxy, c.xyxy)


def test_classifier_predict_writes_all_sinks(image_dir, tmp_path):
    model = REPO / "examples" / "shapes_crop_cls.onnx"
    proc = run_cli("predict", model, image_dir, "--save-json", tmp_path / "c.json", "--save-txt", tmp_path / "txt",
                   "--save-img", tmp_path / "img")
    assert proc.returncode == 0, proc.stderr
    assert "classified" in proc.stderr
    records = json.loads((tmp_path / "c.json").read_text())
    files = sorted(image_dir.iterdir())
    with unideploy.load(model) as p:
        first = p(files[0])
    top = [r for r in records if r["image_id"] == 1]
    assert top[0]["class_id"] == first.top1 and top[0]["score"] == pytest.approx(float(first.confidence[0]), abs=1e-5)
    assert len(list((tmp_path / "txt").glob("*.txt"))) == len(files) == len(list((tmp_path / "img").iterdir()))


def test_library_predict_is_what_the_cli_runs(onnx_model, image_dir, tmp_path):
    """unideploy.predict writes the same files as the command line and reports the same counts."""
    from unideploy.core.sinks import CocoJsonSink, JsonLinesSink

    proc = run_cli("predict", onnx_model, image_dir, "--conf", "0.3", "--save-json", tmp_path / "cli.json",
                   "--save-jsonl", tmp_path / "cli.jsonl", "--quiet")
    assert proc.returncode == 0, proc.stderr
    with JsonLinesSink(tmp_path / "lib.jsonl") as extra:
        s = unideploy.predict(onnx_model, image_dir, conf=0.3, save_json=CocoJsonSink(tmp_path / "lib.json"),
                              sinks=[extra])
    assert (tmp_path / "lib.json").read_text() == (tmp_path / "cli.json").read_text()
    assert (tmp_path / "lib.jsonl").read_text() == (tmp_path / "cli.jsonl").read_text()
    records = json.loads((tmp_path / "lib.json").read_text())
    assert s.ok and s.images == len(list(image_dir.iterdir())) and s.detections == len(records) > 0
    assert s.saved == [str(tmp_path / "lib.json")] and set(s.times) >= {"decode", "inference"}


def test_option_errors_name_the_argument_or_the_flag(onnx_model, tmp_path):
    from unideploy.cli.main import as_flag
    from unideploy.core.errors import OptionError

    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((64, 64, 3), 127, np.uint8))
    with pytest.raises(OptionError, match=r"^conf must be between 0 and 1, got 2$"):
        unideploy.predict(onnx_model, tmp_path, conf=2)
    assert not list(tmp_path.glob("*.json"))
    assert str(as_flag(OptionError("max_det", "must be a positive integer, got 0"))) == (
        "--max-det must be a positive integer, got 0")
    assert str(as_flag(OptionError("agnostic", "must be a bool"))) == "--agnostic-nms must be a bool"
    from unideploy.tools.predict import load_kwargs

    with pytest.raises(OptionError, match=r"nosuch is not a predict option; valid: .*backend"):
        load_kwargs(nosuch=1)  # Ray's predict takes predict()'s arguments through it
