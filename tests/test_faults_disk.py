"""Disk full and unwritable outputs (issue #20 item 2): a one-line error naming the path and the cause, a non-zero
exit, no truncated file under a final name, no temporary file left, earlier complete outputs intact.

Three ways to fill a disk: a real 300 KB tmpfs (mounted in a user + mount namespace with ``unshare``, where the
kernel allows it), RLIMIT_FSIZE in a child process (EFBIG), and ENOSPC injected into one rename in-process.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from conftest import REPO
from unideploy.core.errors import OutputError

pytestmark = pytest.mark.timeout(300)

MODEL = REPO / "src/unideploy/assets/demo/shapes_yolov8.onnx"
VAL = REPO / "src/unideploy/assets/demo/val"
CLI = [sys.executable, "-m", "unideploy"]
N = 24


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("disk_images")
    for p in sorted((VAL / "images").iterdir())[:N]:
        shutil.copy(p, d / p.name)
    return d


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and "WARN" not in ln and "moov atom" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def check_complete(root: Path) -> None:
    """Nothing partial under ``root``: no temporary files, every image decodes, every label line has 6 fields,
    every JSON-lines line parses and the file ends with a newline."""
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        assert not p.name.endswith(".tmp") and ".partial" not in p.name, p
        if p.suffix == ".jpg":
            assert cv2.imread(str(p)) is not None, p
        elif p.suffix == ".txt":
            assert all(len(line.split()) == 6 for line in p.read_text().splitlines()), p
        elif p.suffix == ".jsonl":
            data = p.read_bytes()
            assert not data or data.endswith(b"\n"), p
            [json.loads(line) for line in data.splitlines()]
        elif p.suffix == ".npy":
            np.load(p)


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_disk_full_on_a_tiny_tmpfs(images, tmp_path):
    if not _can_mount_tmpfs():
        pytest.skip("this kernel does not let an unprivileged user namespace mount a tmpfs")
    ref = tmp_path / "ref"
    assert subprocess.run([*CLI, "predict", MODEL, images, "--save-json", ref / "preds.json", "-q"],
                          timeout=300).returncode == 0
    mnt, copy = tmp_path / "mnt", tmp_path / "copy"
    mnt.mkdir()
    cmd = [*CLI, "predict", str(MODEL), str(images), "-q", "--save-json", f"{mnt}/preds.json", "--save-txt",
           f"{mnt}/txt", "--save-img", f"{mnt}/img", "--save-jsonl", f"{mnt}/preds.jsonl"]
    script = (f"mount -t tmpfs -o size=300k tmpfs {mnt} && cp {ref}/preds.json {mnt}/preds.json && "
              f"{' '.join(cmd)}; rc=$?; cp -a {mnt} {copy}; exit $rc")  # the mount ends with the namespace
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    m = re.match(rf"error: {re.escape(str(mnt))}/(\S+): could not write it: No space left on device \(ENOSPC\); "
                 rf"(\d+) of {N} image\(s\) done", line)
    assert m, line
    done = int(m.group(2))
    assert 0 < done < N
    check_complete(copy)
    assert (copy / "preds.json").read_bytes() == (ref / "preds.json").read_bytes()  # the earlier file, intact
    lines = (copy / "preds.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == list(range(done))  # exactly the items done
    assert len(list((copy / "txt").glob("*.txt"))) >= done and len(list((copy / "img").glob("*.jpg"))) >= done - 1


def _limited(limit: int):
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_file_size_limit_preprocess(images, tmp_path):
    out = tmp_path / "pre"
    proc = subprocess.run([*CLI, "preprocess", MODEL, images, "--out", out], capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited(1_000_000))  # one tensor is 1.2 MB
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert re.match(rf"error: {re.escape(str(out))}/val_00000\.npy: could not write it: File too large \(EFBIG\)$",
                    line), line
    assert not list(out.iterdir())  # no tensor under its name, no temporary file, no manifest


def test_file_size_limit_video_and_json(images, tmp_path):
    # the video: OpenCV's writer does not report the failed writes; the finished file is checked
    proc = subprocess.run([*CLI, "predict", MODEL, images, "--save-video", tmp_path / "a.mp4", "-q"],
                          capture_output=True, text=True, timeout=300, preexec_fn=_limited(100_000))
    assert proc.returncode == 1, proc.stderr
    assert re.match(rf"error: {re.escape(str(tmp_path))}/a\.mp4: could not write it: {N} frame\(s\) written",
                    one_error_line(proc.stderr))
    assert not list(tmp_path.iterdir())
    # the COCO JSON at the end (the label files, 1-2 KB each, are written): an earlier JSON stays as it was
    (tmp_path / "preds.json").write_text("[]\n")
    proc = subprocess.run([*CLI, "predict", MODEL, images, "--save-json", tmp_path / "preds.json", "--save-txt",
                           tmp_path / "txt", "-q"], capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(8_000))
    assert proc.returncode == 1, proc.stderr
    assert re.match(rf"error: {re.escape(str(tmp_path))}/preds\.json: could not write it: File too large \(EFBIG\)",
                    one_error_line(proc.stderr))
    assert (tmp_path / "preds.json").read_text() == "[]\n"
    assert len(list((tmp_path / "txt").glob("*.txt"))) == N
    check_complete(tmp_path)


def test_full_disk_at_the_end_then_resume(images, tmp_path, monkeypatch):
    """ENOSPC injected into the rename of the COCO JSON: the error names it, the label files are complete, a
    checkpoint keeps every item, and a resumed run only writes the JSON, equal to an uninterrupted run's."""
    import unideploy.core.atomic as atomic

    ref = tmp_path / "ref.json"
    unideploy.predict(MODEL, images, save_json=ref)
    real = os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith("preds.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(atomic.os, "replace", full)
    out = tmp_path / "out" / "preds.json"
    with pytest.raises(OutputError, match=r"preds\.json: could not write it: No space left on device \(ENOSPC\)") as e:
        unideploy.predict(MODEL, images, save_json=out, save_txt=tmp_path / "out" / "txt")
    assert e.value.errno == errno.ENOSPC and e.value.progress.done == N and e.value.progress.resumable
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not out.exists() and len(list((tmp_path / "out" / "txt").glob("*.txt"))) == N
    check_complete(tmp_path / "out")
    s = unideploy.predict(MODEL, images, save_json=out, save_txt=tmp_path / "out" / "txt", resume=True)
    assert s.resumed == N and s.images == N
    assert out.read_bytes() == ref.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["preds.json", "txt"]  # the checkpoint is gone


def test_unwritable_output_is_one_line(images, tmp_path):
    txt = tmp_path / "txt"
    names = sorted(p.stem for p in images.iterdir())
    (txt / f"{names[3]}.txt").mkdir(parents=True)  # a folder where a label file must go
    proc = subprocess.run([*CLI, "predict", MODEL, images, "--save-txt", txt, "-q"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert re.match(rf"error: {re.escape(str(txt))}/{names[3]}\.txt: could not write it: Is a directory \(EISDIR\); "
                    rf"3 of {N} image\(s\) done; rerun with --resume to continue$", line), line
    assert sorted(p.stem for p in txt.glob("*.txt") if p.is_file()) == names[:3]
    check_complete(txt)
