"""unideploy bench: statistics on known data, variant discovery, the CLI and its JSON report.

The CLI tests use the probe model of bench_helpers (fast to build, no Ultralytics). No timed assertions:
numbers are checked for presence, type and internal consistency, never for speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bench_helpers import build_probe_model, probe_coco, probe_images
from conftest import has_module

from unideploy.tools.bench.discover import base_stem, file_format, find_variants, precision_of
from unideploy.tools.bench.report import format_table, library_versions, machine_info
from unideploy.tools.bench.stats import LatencyStats, mean_p99_ms, percentile
from unideploy.tools.bench.timers import parse_duration
from unideploy.core.errors import InputError


# -- statistics -------------------------------------------------------------------------------------
def test_percentiles_on_known_data():
    data = list(range(1, 101))  # 1..100
    assert percentile(data, 0) == 1 and percentile(data, 100) == 100
    assert percentile(data, 50) == 50.5
    assert percentile(data, 90) == pytest.approx(90.1)
    assert percentile(data, 99) == pytest.approx(99.01)
    assert percentile([5.0], 99) == 5.0
    assert percentile([4, 1, 3, 2], 25) == 1.75  # unsorted input


@pytest.mark.parametrize("q", [0, 1, 10, 33.3, 50, 90, 99, 99.9, 100])
def test_percentiles_match_numpy(q):
    rng = np.random.default_rng(3)
    data = rng.lognormal(1, 0.7, 257)
    assert percentile(data.tolist(), q) == pytest.approx(float(np.percentile(data, q)), rel=1e-12)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1, 2], 101)


def test_latency_stats_in_milliseconds():
    s = LatencyStats.from_seconds([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (s.n, s.min_ms, s.max_ms) == (100, 1.0, 100.0)
    assert s.mean_ms == pytest.approx(50.5) and s.median_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.std_ms == pytest.approx(float(np.std(np.arange(1, 101))))
    assert set(s.to_dict()) == {"n", "min_ms", "mean_ms", "median_ms", "p90_ms", "p99_ms", "max_ms", "std_ms"}
    assert mean_p99_ms([0.001, 0.003]) == {"mean": 2.0, "p99": pytest.approx(2.98), "n": 2}
    assert mean_p99_ms([]) is None
    with pytest.raises(ValueError):
        LatencyStats.from_seconds([])


@pytest.mark.parametrize("text,seconds", [("10s", 10), ("500ms", 0.5), ("2m", 120), ("1.5", 1.5), (3, 3.0), ("0.25 s", 0.25)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["abc", "10h", "-1s", "0", ""])
def test_parse_duration_rejects(text):
    with pytest.raises(InputError, match="--time expects"):
        parse_duration(text)


def test_format_table_and_machine_info():
    t = format_table(["a", "long header"], [["x", None], ["yyyy", 1.5]])
    assert t.splitlines() == ["a     long header", "----  -----------", "x     -", "yyyy  1.5"]
    m = machine_info()
    assert m["logical_cores"] >= 1 and m["cpu"]
    v = library_versions()
    assert v["numpy"] == np.__version__ and "onnxruntime" in v


# -- discovery --------------------------------------------------------------------------------------
def test_variants_found_by_name(tmp_path):
    for name in ("det.onnx", "det_int8.onnx", "det-fp16.onnx", "other.onnx", "detector.onnx", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    for folder, xml in (("det_openvino_model", "det.xml"), ("det_int8_openvino_model", "det.xml")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / xml).write_text('<net><layer type="Const"><data element_type="f32"/></layer></net>')
        (tmp_path / folder / "det.bin").write_bytes(b"0" * 1000)
    (tmp_path / "det.xml").write_text('<net><layer type="FakeQuantize"/></net>')
    got = {(v.path.relative_to(tmp_path).as_posix(), v.backend, v.precision)
           for v in find_variants(tmp_path / "det.onnx", ["onnxruntime", "openvino"])}
    assert got == {
        ("det.onnx", "onnxruntime", "fp32"), ("det.onnx", "openvino", "fp32"),
        ("det_int8.onnx", "onnxruntime", "int8"), ("det_int8.onnx", "openvino", "int8"),
        ("det-fp16.onnx", "onnxruntime", "fp16"), ("det-fp16.onnx", "openvino", "fp16"),
        ("det_openvino_model/det.xml", "openvino", "fp32"), ("det_int8_openvino_model/det.xml", "openvino", "int8"),
        ("det.xml", "openvino", "int8"),  # precision from the content (FakeQuantize)
    }
    # the same set is found from the OpenVINO folder
    same = find_variants(tmp_path / "det_openvino_model", ["onnxruntime", "openvino"])
    assert {(v.path.relative_to(tmp_path).as_posix(), v.backend) for v in same} == {(a, b) for a, b, _ in got}
    ir = next(v for v in same if v.path.parent.name == "det_openvino_model")
    assert ir.size_mb == pytest.approx((ir.path.stat().st_size + 1000) / 2**20)
    assert base_stem("yolov8n_int8_openvino_model") == "yolov8n"
    assert precision_of(tmp_path / "det.onnx") == "fp32"


def test_variant_backends_and_formats_use_canonical_backend_names(tmp_path):
    (tmp_path / "det.onnx").write_bytes(b"x")
    got = {(v.backend, v.format) for v in find_variants(tmp_path / "det.onnx", ["ort", "ov"])}
    assert got == {("onnxruntime", "onnxruntime"), ("openvino", "onnxruntime")}
    names = {s: file_format(Path(f"m{s}")) for s in (".onnx", ".xml", ".pt", ".om", ".rknn", ".engine", ".tflite")}
    assert names == {".onnx": "onnxruntime", ".xml": "openvino", ".pt": "torch", ".om": "ascend", ".rknn": "rknn",
                     ".engine": "tensorrt", ".tflite": "tflite"}


def test_backend_options_accept_aliases():
    from unideploy.tools.bench.core import _options

    opts = _options("openvino", None, None, {"*": {"hint": "latency"}, "ov": {"hint": "throughput"}, "ort": {"spin": 0}})
    assert opts == {"hint": "throughput"}


# -- CLI ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    pytest.importorskip("onnx")
    d = tmp_path_factory.mktemp("bench_probe")
    model = build_probe_model(d / "models")
    images = probe_images(d / "images", 10)
    return {"model": model, "static": build_probe_model(d / "static", batch=1), "images": images,
            "folder": d / "images", "coco": probe_coco(images, d / "images" / "gt.json")}


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "unideploy", "bench", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_smoke_json_keys(probe, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli(probe["model"], "--loop", 5, "--warmup", 1, "--batch", "1,2", "--data", probe["folder"],
               "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "median ms" in proc.stdout and "e2e FPS" in proc.stdout and "not separable" in proc.stdout
    rep = json.loads(out.read_text())
    assert {"machine", "versions", "settings", "runs", "model"} <= set(rep)
    assert {"cpu", "logical_cores", "ram_gb", "load_average"} <= set(rep["machine"])
    assert rep["versions"]["onnxruntime"] and rep["versions"]["numpy"]
    (run,) = rep["runs"]
    assert run["backend"] == "onnxruntime" and run["precision"] == "fp32" and run["error"] is None
    assert [b["batch"] for b in run["batches"]] == [1, 2]
    for b in run["batches"]:
        pure = b["pure"]
        assert pure["runs"] == 5 and len(pure["latencies_ms"]) == 5
        lat = pure["latency_ms"]
        assert lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert pure["throughput"] == pytest.approx(b["batch"] * pure["runs"] / pure["wall_s"])
        assert pure["split"] == "not separable"
        e2e = b["e2e"]
        assert e2e["images"] == 10 and e2e["failed"] == 0 and e2e["batch"] == b["batch"]
        assert set(e2e["stages_ms"]) == {"read+decode", "preprocess", "inference", "postprocess"}
        st = e2e["stages_ms"]
        assert st["read+decode"]["n"] == st["preprocess"]["n"] == 10  # per image
        assert st["inference"]["n"] == st["postprocess"]["n"] == -(-10 // b["batch"])  # per batch, divided by its size
        assert all(v["p99"] >= 0 and v["mean"] >= 0 for v in st.values())
        assert b["ratio"] == pytest.approx(e2e["images_per_s"] / pure["throughput"])
    s = run["startup"]
    assert s["cache"].startswith("none")
    for key in ("first", "cached"):
        assert {"import_s", "load_s", "first_run_s", "time_to_first_result_s", "peak_rss_mb"} <= set(s[key])
        assert s[key]["peak_rss_mb"] > 0


@pytest.mark.skipif(not has_module("openvino"), reason="openvino not installed")
def test_cli_all_backends_with_map_time_and_async(probe, tmp_path):
    out = tmp_path / "all.json"
    proc = cli(probe["model"], "--backend", "all", "--time", "200ms", "--warmup", 1, "--mode", "async",
               "--requests", 2, "--data", probe["coco"], "--no-startup", "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(out.read_text())
    assert {r["backend"] for r in rep["runs"]} == {"onnxruntime", "openvino"}
    for run in rep["runs"]:
        assert run["error"] is None and run["startup"] is None
        b = run["batches"][0]
        assert b["pure"]["mode"] == "async" and b["pure"]["requests"] == 2 and b["pure"]["runs"] >= 1
        assert b["e2e"]["images"] == 10 and b["e2e"]["requests"] == 2
        if has_module("pycocotools"):
            assert run["map50_95"] == pytest.approx(1.0)  # the probe's box is exactly the ground truth
    assert "mAP50-95" in proc.stdout and "1.000" in proc.stdout


def test_cli_fixed_batch_is_reported_not_crashed(probe):
    proc = cli(probe["static"], "--batch", "1,4", "--loop", 2, "--warmup", 0, "--no-startup", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "batch 4: the model has a fixed batch of 1" in proc.stdout


@pytest.mark.parametrize("argv,needle", [
    (["--time", "abc"], "error: --time expects a duration like 10s"),
    (["--requests", "2"], "error: --requests needs --mode async"),
    (["--backend", "nosuch"], "error: unknown backend 'nosuch'; valid backends:"),
    (["--loop", "0"], "error: argument --loop: expected a positive integer, got '0'"),
])
def test_cli_bad_input_one_line(probe, argv, needle):
    proc = cli(probe["model"], *argv, "--no-startup", "--quiet")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and needle in proc.stderr, proc.stderr


def test_cli_bad_batch_is_a_usage_error(probe):
    proc = cli(probe["model"], "--batch", "0,2")
    assert proc.returncode == 1 and "expected positive integers like 1 or 1,8" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_cli_missing_model(tmp_path):
    proc = cli(tmp_path / "none.onnx", "--quiet")
    assert proc.returncode == 1 and "model file not found" in proc.stderr


@pytest.mark.skipif(not has_module("matplotlib"), reason="matplotlib not installed")
def test_plot_is_a_png(probe, tmp_path):
    png = tmp_path / "b.png"
    proc = cli(probe["model"], "--loop", 3, "--warmup", 0, "--data", probe["folder"], "--no-startup", "--plot", png, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_openvino_startup_uses_a_fresh_cache(probe):
    if not has_module("openvino"):
        pytest.skip("openvino not installed")
    from unideploy.tools.bench.runners import startup

    s = startup(probe["model"], "openvino")
    assert s["cache"].startswith("OpenVINO CACHE_DIR")
    assert s["first"]["load_s"] > 0 and s["cached"]["load_s"] > 0


def test_bench_help_is_light():
    code = ("import sys; from unideploy.cli.main import main\ntry:\n main(['bench', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('onnxruntime', 'cv2', 'torch', 'openvino', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--backend" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_backend_options_are_parsed_and_passed(probe, tmp_path):
    from unideploy.cli.bench import parse_options

    assert parse_options(["spin=false", "hint=throughput", "threads=2", "x=on"]) == {
        "spin": False, "hint": "throughput", "threads": 2, "x": True}
    with pytest.raises(InputError, match="--option expects KEY=VALUE"):
        parse_options(["spin"])
    out = tmp_path / "o.json"
    proc = cli(probe["model"], "-O", "spin=false", "--loop", 2, "--warmup", 0, "--no-startup", "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["runs"][0]["batches"][0]["pure"]["cpu_ms_per_image"] > 0
