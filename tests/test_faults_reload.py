"""Fault: the model file changed under a running predictor / server (issue #20 item 6).

* library: while 4 threads predict, the file is replaced (another valid model), truncated in place, or replaced
  although a digest is pinned. The running predictor keeps answering with the model it loaded (no crash, the same
  results); :meth:`Predictor.reopen` uses the new valid file, refuses a truncated one with a ModelError, and
  refuses a file that is not the pinned one with the pinned-digest error;
* OpenVINO (in a child process, so that a SIGBUS from a mapped weights file would fail one test, not the
  session): the IR's ``.bin`` truncated in place under an open predictor; predictions go on, ``reopen`` refuses;
* Ray Serve with ``reload_check_s``: under a steady load, a replaced file is picked up (answers switch to the new
  model), a truncated one is refused (``GET /`` shows why, answers go on from the model loaded before), and every
  request in flight is answered 200.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

import unideploy
from conftest import REPO
from reliability_helpers import model_for
from unideploy.core.errors import ModelError
from unideploy.core.security import file_sha256

DEMO = REPO / "src" / "unideploy" / "assets" / "demo" / "shapes_yolov8.onnx"


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(6)
    return [rng.integers(0, 255, (int(rng.integers(60, 200)), int(rng.integers(60, 200)), 3), np.uint8)
            for _ in range(6)]


def _dicts(results) -> list:
    return [r.to_dicts() for r in results]


class Hammer:
    """Threads calling ``predictor`` on ``frames`` until stopped; every result is compared with ``ref``."""

    def __init__(self, predictor, frames, ref, n: int = 4) -> None:
        self.errors: list[str] = []
        self.calls = 0
        self._stop = threading.Event()

        def work(k: int) -> None:
            while not self._stop.is_set():
                i = (self.calls + k) % len(frames)
                try:
                    got = predictor(frames[i], conf=0.05).to_dicts()
                    if got != ref[i]:
                        self.errors.append(f"frame {i}: another result")
                except Exception as e:  # noqa: BLE001 - reported by the test
                    self.errors.append(repr(e))
                self.calls += 1

        self.threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(n)]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads)


@pytest.mark.timeout(300)
def test_predictor_reopen_after_the_file_changed(tiny, frames, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copy(model_for(tiny, "onnxruntime"), path)
    with unideploy.load(DEMO, conf=0.05) as demo:
        demo_ref = _dicts(demo(frames))
    p = unideploy.load(path, conf=0.05)
    ref = _dicts(p(frames))
    assert ref != demo_ref and sum(map(len, ref)) > 0
    hammer = Hammer(p, frames, ref)
    time.sleep(0.3)
    # 1. replaced (atomically) by another valid model: the running predictor is unaffected; reopen uses the new one
    tmp = tmp_path / "incoming.onnx"
    shutil.copy(DEMO, tmp)
    os.replace(tmp, path)
    time.sleep(0.3)
    new = p.reopen()
    assert _dicts(new(frames)) == demo_ref
    new.close()
    # 2. truncated in place: reopen refuses it with a one-line ModelError; the running predictor goes on
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(ModelError) as ei:
        p.reopen()
    assert str(path) in str(ei.value) and "\n" not in str(ei.value)
    time.sleep(0.3)
    hammer.stop()
    assert not hammer.errors, hammer.errors[:3]
    assert hammer.calls > 20 and _dicts(p(frames)) == ref
    p.close()


@pytest.mark.timeout(300)
def test_reopen_refuses_a_file_that_is_not_the_pinned_one(tiny, frames, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copy(model_for(tiny, "onnxruntime"), path)
    digest = file_sha256(path)
    with unideploy.load(path, conf=0.05, sha256=digest) as p:
        ref = _dicts(p(frames))
        again = p.reopen()  # the same file: accepted
        assert _dicts(again(frames)) == ref
        again.close()
        shutil.copy(DEMO, tmp_path / "incoming.onnx")
        os.replace(tmp_path / "incoming.onnx", path)
        with pytest.raises(ModelError, match=r"model.onnx: SHA-256 is [0-9a-f]{64}, expected " + digest):
            p.reopen()
        assert _dicts(p(frames)) == ref  # still the model it loaded


OV_TRUNCATE = r"""
import json, sys, numpy as np, unideploy
from unideploy.core.errors import ModelError
xml = sys.argv[1]
imgs = [np.random.default_rng(k).integers(0, 255, (90, 120, 3), np.uint8) for k in range(4)]
p = unideploy.load(xml, backend="openvino", conf=0.05, cache_dir="")  # no compiled-model cache: weights from the .bin
ref = [p(im).to_dicts() for im in imgs]
with open(xml[:-4] + ".bin", "r+b") as f:
    f.truncate(1000)
same = all(p(im).to_dicts() == r for im, r in zip(imgs, ref))
try:
    p.reopen()
    refused = None
except ModelError as e:
    refused = str(e)
print("RESULT " + json.dumps({"same": same, "refused": refused, "boxes": sum(map(len, ref))}))
"""


@pytest.mark.timeout(300)
def test_openvino_weights_truncated_under_an_open_predictor(tiny, tmp_path):
    folder = tmp_path / "ov"
    shutil.copytree(model_for(tiny, "openvino").parent, folder)
    xml = next(folder.glob("*.xml"))
    proc = subprocess.run([sys.executable, "-c", OV_TRUNCATE, str(xml)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert res["same"] and res["boxes"] > 0, res
    assert res["refused"] and xml.name in res["refused"] and "\n" not in res["refused"], res


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_server_reloads_a_changed_model_file(tiny, frames, tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    requests = pytest.importorskip("requests")
    import ray
    from ray import serve

    from unideploy.apps import distributed
    from unideploy.apps.serving import build_app
    from unideploy.testing import free_port

    path = tmp_path / "model.onnx"
    shutil.copy(model_for(tiny, "onnxruntime"), path)
    jpg = cv2.imencode(".png", frames[0])[1].tobytes()  # lossless: the server sees frames[0] exactly
    with unideploy.load(path, conf=0.05) as p, unideploy.load(DEMO, conf=0.05) as d:
        ref, demo_ref = p(frames[0]).to_dicts(), d(frames[0]).to_dicts()
    distributed.init(num_cpus=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    answers: list[tuple[int, object]] = []
    stop = threading.Event()

    def client() -> None:
        s = requests.Session()
        while not stop.is_set():
            r = s.post(url + "/predict?conf=0.05", data=jpg, headers={"Content-Type": "image/png"}, timeout=60)
            answers.append((r.status_code, r.json()["results"][0]["detections"] if r.status_code == 200 else r.text))

    def wait_for(cond, what: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = requests.get(url + "/", timeout=30).json()
            if cond(info):
                return info
            time.sleep(0.2)
        raise AssertionError(f"{what} within {timeout} s: {info}")

    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(path, conf=0.05, reload_check_s=0.2), name="unideploy", route_prefix="/")
        threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1)
        shutil.copy(DEMO, tmp_path / "incoming.onnx")
        os.replace(tmp_path / "incoming.onnx", path)
        wait_for(lambda i: i["reloads"] == 1, "the replaced file was not loaded")
        n_switched = len(answers)
        time.sleep(1)
        with open(path, "r+b") as f:
            f.truncate(1000)
        info = wait_for(lambda i: i["reload_error"], "the truncated file was not refused")
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(90)
    finally:
        stop.set()
        serve.shutdown()
        ray.shutdown()
    assert info["reloads"] == 1 and "kept the model loaded before" in info["reload_error"], info
    assert "model.onnx" in info["reload_error"] and "\n" not in info["reload_error"]
    codes = {c for c, _ in answers}
    assert codes == {200}, [a for a in answers if a[0] != 200][:3]
    dets = [d for _, d in answers]
    assert ref != demo_ref and dets[0] == ref and dets[-1] == demo_ref  # the old model first, the new one at the end
    assert all(d in (ref, demo_ref) for d in dets)  # each answer from one model or the other, never a mix
    assert dets[:n_switched].count(ref) > 0 and dets[n_switched:].count(demo_ref) > 5
