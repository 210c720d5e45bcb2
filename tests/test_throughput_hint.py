"""The throughput hint: ONNX Runtime's CPU provider runs several single-core-share runs in flight; ``predict`` and
``eval`` over files use it by default. Outputs must not change (only the scheduling does)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import unideploy
from unideploy.core.errors import InputError
from unideploy.runtime.backends.onnxruntime import throughput_runs
from unideploy.tools.predict import batch_hint

DEMO = Path(unideploy.__file__).parent / "assets" / "demo"
MODEL = DEMO / "shapes_yolov8.onnx"
IMAGES = sorted((DEMO / "val" / "images").glob("*"))[:12]


def test_throughput_runs_split_the_cores():
    assert throughput_runs(cores=1) == (1, 1)
    assert throughput_runs(cores=2) == (2, 1)
    assert throughput_runs(cores=6) == (4, 1)
    assert throughput_runs(cores=16) == (4, 4)
    assert throughput_runs(threads=3, cores=16) == (5, 3)
    assert throughput_runs(threads=4, cores=2) == (1, 4)  # asked for more threads than cores: one run


def test_ort_throughput_hint_sets_runs_and_threads():
    runs, threads = throughput_runs()
    with unideploy.load(MODEL, hint="throughput") as p:
        assert p.requests == runs
        assert p.session._sess.get_session_options().intra_op_num_threads == threads
    with unideploy.load(MODEL, hint="throughput", requests=1) as p:  # an explicit count still wins
        assert p.requests == 1


def test_ort_bad_hint_is_one_line():
    with pytest.raises(InputError, match="hint must be latency or throughput, got 'fast'"):
        unideploy.load(MODEL, hint="fast")


def test_hint_is_ignored_by_runtimes_without_it():
    from unideploy.runtime.backends.registry import get_backend

    assert get_backend("torch").parse_options({"hint": "throughput"}) is not None


def test_outputs_equal_under_both_hints():
    with unideploy.load(MODEL) as a, unideploy.load(MODEL, hint="throughput") as b:
        ra = list(a.stream(IMAGES))
        rb = list(b.stream(IMAGES))
    assert [o.item.name for o in ra] == [o.item.name for o in rb] and len(ra) == len(IMAGES)
    for x, y in zip(ra, rb):
        assert np.array_equal(x.result.xyxy, y.result.xyxy)
        assert np.array_equal(x.result.confidence, y.result.confidence)


def test_predict_over_files_uses_throughput_and_keeps_results(tmp_path, monkeypatch):
    assert batch_hint(None, None) == "throughput" and batch_hint(None, {"spin": False}) == "throughput"
    assert batch_hint(None, {"hint": "latency"}) is None and batch_hint("latency", None) == "latency"
    seen = []
    real = unideploy.runtime.backends.onnxruntime.OnnxRuntimeSession.__init__

    def spy(self, *args, **kw):
        real(self, *args, **kw)
        seen.append(self._runs)

    monkeypatch.setattr(unideploy.runtime.backends.onnxruntime.OnnxRuntimeSession, "__init__", spy)
    unideploy.predict(MODEL, [str(p) for p in IMAGES], save_json=tmp_path / "t.json")
    unideploy.predict(MODEL, [str(p) for p in IMAGES], save_json=tmp_path / "l.json",
                      backend_options={"hint": "latency"})
    unideploy.predict(MODEL, [str(p) for p in IMAGES], hint="latency")
    assert seen == [throughput_runs()[0], None, None]
    assert json.loads((tmp_path / "t.json").read_text()) == json.loads((tmp_path / "l.json").read_text())


def test_cli_hint_flag(tmp_path):
    from unideploy.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["predict", str(MODEL), str(IMAGES[0]), "--hint", "fastest"])
    assert e.value.code not in (0, None)
    assert main(["predict", str(MODEL), str(IMAGES[0]), "--hint", "latency", "--save-json",
                 str(tmp_path / "p.json"), "-q"]) in (0, None)
    assert len(json.loads((tmp_path / "p.json").read_text())) > 0
