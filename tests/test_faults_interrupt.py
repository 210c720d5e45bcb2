"""Interrupted batch runs (issue #20 item 1): SIGINT / SIGTERM at random points of ``predict`` and the three
offline stages in a child process, then ``--resume`` until done; the final files must equal an uninterrupted
run's byte for byte, and after every interrupt no file may be partial (COCO JSON absent, JSON lines whole and
covering exactly the items done, per-image files complete, no temporary files). In-process: threads released,
the progress on the exception, checkpoints of another run refused.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from conftest import REPO
from unideploy.core.errors import InputError

pytestmark = pytest.mark.timeout(600)

MODEL = REPO / "src/unideploy/assets/demo/shapes_yolov8.onnx"
VAL = REPO / "src/unideploy/assets/demo/val"
CLI = [sys.executable, "-m", "unideploy"]
#: 30 demo validation images, 8 copies each: long enough that a run on an idle machine is still going when the
#: random interrupt (0-0.4 s after its first output) comes, several times over (with 30 the runs could finish first)
COPIES = 8
N_GOOD = 30 * COPIES
LINE = re.compile(r"^interrupted by (SIGINT|SIGTERM): (\d+) of (\d+) (image|sample)\(s\) done")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """240 demo validation images (30, 8 copies each) and one text file named .jpg among them (a skipped item)."""
    d = tmp_path_factory.mktemp("interrupt_images")
    for p in sorted((VAL / "images").iterdir())[:30]:
        for k in range(COPIES):
            shutil.copy(p, d / f"{p.stem}_{k}{p.suffix}")
    (d / "val_00010b.jpg").write_text("not an image\n")
    return d


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def same_tree(a: Path, b: Path) -> None:
    """Every file under ``a`` and ``b`` (hidden ones included) is present in both with the same bytes."""
    names_a = [p.relative_to(a) for p in _files(a)]
    names_b = [p.relative_to(b) for p in _files(b)]
    assert names_a == names_b
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(n) for n in names_a], shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


def no_partial_files(root: Path) -> None:
    """No temporary or partial file anywhere; every image decodes; every label file parses; JSON lines whole."""
    for p in _files(root):
        assert not p.name.endswith(".tmp") and ".partial" not in p.name, p
        if p.suffix == ".jpg":
            assert cv2.imread(str(p)) is not None, p
        elif p.suffix == ".txt":
            for line in p.read_text().splitlines():
                assert len(line.split()) == 6, (p, line)
        elif p.suffix == ".npy":
            assert np.load(p).shape[0] == 1, p
        elif p.suffix == ".jsonl":
            data = p.read_bytes()
            assert not data or data.endswith(b"\n"), p
            [json.loads(line) for line in data.splitlines()]


def handles_sigterm(pid: int) -> bool:
    """True once the process has its own SIGTERM handler (the CLI installs it before any work)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", text, re.M).group(1), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def interrupt(args: list, watch: Path, rng: random.Random, unit_glob: str = "*") -> tuple[int, str]:
    """Start the CLI, wait until it has written one more file under ``watch`` than before (it is past loading),
    wait a random 0-0.4 s more, send SIGINT or SIGTERM; the exit status and stderr."""
    before = len(list(watch.glob(unit_glob))) if watch.exists() else 0
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if watch.exists() and len(list(watch.glob(unit_glob))) > before and handles_sigterm(proc.pid):
            break
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.4))
    sig = rng.choice([signal.SIGINT, signal.SIGTERM])
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode in (0, 1, -sig):  # it finished before the signal came (or while the interpreter exited)
        assert "interrupted by" not in err, err
        return 0, err
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    last = err.strip().splitlines()[-1]
    m = LINE.match(last)
    assert m and m.group(1) == sig.name and "Traceback" not in err, err
    return proc.returncode, err


def done_of(err: str) -> int:
    m = LINE.match(err.strip().splitlines()[-1])
    return int(m.group(2)) if m else -1


def test_predict_interrupted_and_resumed_equals_uninterrupted(images, tmp_path):
    flags = ["--conf", "0.3", "-q"]
    outs = lambda d: ["--save-json", d / "preds.json", "--save-txt", d / "txt", "--save-img", d / "img",  # noqa: E731
                      "--save-jsonl", d / "preds.jsonl"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    proc = subprocess.run([*CLI, "predict", MODEL, images, *flags, *map(str, outs(ref))], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "1 file(s) skipped" in proc.stderr, proc.stderr  # the text file
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    done, interrupts = 0, 0
    for _ in range(4):
        rc, err = interrupt(["predict", MODEL, images, *flags, *outs(out), "--resume"], out / "img", rng)
        if rc in (0, 1):
            break
        interrupts += 1
        n = done_of(err)
        assert n >= done, (seed, err)  # never loses finished items
        done = n
        no_partial_files(out)
        assert not (out / "preds.json").exists()  # the COCO JSON: absent until the run completes
        lines = [json.loads(x) for x in (out / "preds.jsonl").read_text().splitlines()]
        assert [x["index"] for x in lines] == list(range(n)), seed  # exactly the items done
        assert (out / ".preds.json.resume.json").is_file() == (n > 0)
    assert interrupts >= 2, f"seed {seed}: the runs ended before they could be interrupted"
    proc = subprocess.run([*CLI, "predict", MODEL, images, *flags, *map(str, outs(out)), "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "1 file(s) skipped" in proc.stderr, proc.stderr  # the earlier run's failure too
    same_tree(ref, out)


def test_offline_stages_interrupted_and_resumed_equal_uninterrupted(images, tmp_path):
    rng = random.Random(seed := random.randrange(1 << 30))

    def stage(args: list, out_of: callable, watch_of: callable, glob: str = "*") -> None:
        ref, out = tmp_path / f"{args[0]}_ref", tmp_path / f"{args[0]}_out"
        proc = subprocess.run([*CLI, *map(str, args + out_of(ref))], capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, 1), proc.stderr
        for _ in range(2):
            rc, err = interrupt(args + out_of(out) + ["--resume"], watch_of(out), rng, glob)
            if rc in (0, 1):
                break
            no_partial_files(out)
            assert not list(out.rglob("manifest.json")) and not list(out.rglob("outputs.json")), seed
            assert not (out / "preds.json").exists(), seed
        proc = subprocess.run([*CLI, *map(str, args + out_of(out) + ["--resume"])], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode in (0, 1), proc.stderr
        same_tree(ref, out)

    stage(["preprocess", MODEL, images], lambda d: ["--out", d], lambda d: d, "*.npy")
    pre = tmp_path / "preprocess_ref"
    stage(["infer", MODEL, "--input", pre], lambda d: ["--output", d, "--output-dirname", "run"],
          lambda d: d / "run", "*.npy")
    stage(["postprocess", MODEL, "--input", tmp_path / "infer_ref" / "run", "--manifest", pre / "manifest.json",
           "--conf", "0.3"], lambda d: ["--save-json", d / "preds.json", "--save-txt", d / "txt", "--save-img", d / "img"],
          lambda d: d / "img")


def _unideploy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("unideploy-")]


class Stop:
    """A sink that raises KeyboardInterrupt (as Ctrl-C would) when it is handed item ``at``."""

    wants_image = False

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def add(self, outcome) -> None:
        if self.seen == self.at:
            raise KeyboardInterrupt
        self.seen += 1

    def close(self) -> None:
        pass


def test_interrupt_releases_threads_and_reports_progress(images, tmp_path):
    out = tmp_path / "preds.json"
    with unideploy.load(MODEL) as pred:
        with pytest.raises(KeyboardInterrupt) as info:
            unideploy.predict(pred, images, save_json=out, sinks=[Stop(7)])
        assert info.value.progress.done == 7 and info.value.progress.total == N_GOOD + 1
        assert info.value.progress.resumable and (tmp_path / ".preds.json.resume.json").is_file()
        assert not out.exists()
        for _ in range(100):  # the stream's threads are joined before the exception leaves predict()
            if not _unideploy_threads():
                break
            time.sleep(0.05)
        assert not _unideploy_threads()
        assert len(pred(str(sorted(images.iterdir())[0]))) >= 0  # the predictor still works
        # another threshold: the checkpoint is refused, naming what differs
        with pytest.raises(InputError, match="another (options|overrides)"):
            unideploy.predict(pred, images, save_json=out, conf=0.5, resume=True)
        s = unideploy.predict(pred, images, save_json=out, resume=True)
        assert s.resumed == 7 and s.images == N_GOOD and len(s.failures) == 1
    ref = tmp_path / "ref.json"
    unideploy.predict(MODEL, images, save_json=ref)
    assert out.read_bytes() == ref.read_bytes()
    assert not (tmp_path / ".preds.json.resume.json").exists()  # a completed run removes its checkpoint


def test_resume_refuses_what_it_cannot_continue(images, tmp_path):
    with pytest.raises(InputError, match="resume needs"):
        unideploy.predict(MODEL, images, resume=True)  # no output to continue
    with pytest.raises(InputError, match="video output"):
        unideploy.predict(MODEL, images, save_video=tmp_path / "a.mp4", resume=True)
    assert not list(tmp_path.iterdir())


def test_eval_interrupted_exits_143_with_one_line(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.Popen([*CLI, "eval", str(MODEL), "--data", str(VAL / "data.yaml"), "--json", str(report), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ})
    while proc.poll() is None and not handles_sigterm(proc.pid):
        time.sleep(0.01)
    time.sleep(0.5)  # loading or evaluating (on an idle machine the whole eval of 150 images takes about 2 s)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("interrupted by SIGTERM") and "Traceback" not in err, err
    # stopped while loading: no count; while evaluating: how many of the 150 images were predicted
    assert re.fullmatch(r"interrupted by SIGTERM(: \d+ of 150 image\(s\) done)?", lines[-1]), lines[-1]
    assert not report.exists() and not list(tmp_path.iterdir())
