"""Fault: a Ray Data worker lost mid-job (issue #20 item 3).

``unideploy.ray.predict`` over 2,000 generated 64x64 images (``evaluate`` over 600 of them) on a local 2-CPU Ray instance; once a few
batches are done, the test kills one predictor actor's process (SIGKILL, by the pid the actor reported). Ray Data
restarts the actor and runs its lost batch again: the job completes, every image is in the output exactly once,
the results equal a single-process run, and the restart / retry counts are reported (``unideploy.ray.last_run``,
``evaluate``'s ``ray_restarts`` / ``ray_retries``). Skipped when Ray is not installed; hard timeouts throughout.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import unideploy
from reliability_helpers import model_for

pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

N_IMAGES = 2000
N_EVAL = 600


@pytest.fixture(scope="module")
def ray_local():
    from unideploy.apps import distributed

    ray = distributed.init(num_cpus=2)
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
    except AttributeError:
        pass
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """2,000 small generated images (64x64 and nearby sizes) with a few filled shapes each, plus YOLO labels."""
    root = tmp_path_factory.mktemp("ray_faults")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(20)
    for i in range(N_IMAGES):
        h, w = 64 + int(rng.integers(-8, 9)), 64 + int(rng.integers(-8, 9))
        img = np.full((h, w, 3), rng.integers(0, 255, 3), np.uint8)
        lines = []
        for _ in range(int(rng.integers(1, 4))):
            x1, y1 = int(rng.integers(0, w - 16)), int(rng.integers(0, h - 16))
            x2, y2 = x1 + int(rng.integers(8, 16)), y1 + int(rng.integers(8, 16))
            cv2.rectangle(img, (x1, y1), (x2, y2), [int(c) for c in rng.integers(0, 255, 3)], -1)
            lines.append(f"{int(rng.integers(0, 80))} {(x1 + x2) / 2 / w:.4f} {(y1 + y2) / 2 / h:.4f} "
                         f"{(x2 - x1) / w:.4f} {(y2 - y1) / h:.4f}")
        cv2.imwrite(str(root / "images" / f"{i:05d}.png"), img)
        (root / "labels" / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
    return root


def _kill_one_actor_midway(ledger, job: threading.Thread, min_done: int, timeout: float) -> int:
    """Wait until ``min_done`` batches are finished, then SIGKILL the first actor that started; its pid."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.is_alive():
        st = ray.get(ledger.stats.remote(), timeout=30)
        if st["batches_done"] >= min_done and st["pids"]:
            pid = st["pids"][0]
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no actor to kill: the job ended or {timeout} s passed first ({st})")


def _run_with_kill(fn, ledger) -> tuple[object, int]:
    out: dict[str, object] = {}

    def job() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test
            out["error"] = e

    t = threading.Thread(target=job, daemon=True)
    t.start()
    pid = _kill_one_actor_midway(ledger, t, min_done=4, timeout=300)
    t.join(400)
    assert not t.is_alive(), "the Ray job did not finish within 400 s of the kill"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["result"], pid


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_predict_survives_a_killed_worker(ray_local, tiny, many_images, tmp_path):
    from unideploy import ray as uray

    model = model_for(tiny, "onnxruntime")
    files = sorted((many_images / "images").iterdir())
    ledger = uray.new_ledger()
    res, pid = _run_with_kill(
        lambda: uray.predict(model, many_images / "images", concurrency=2, batch_size=50, conf=0.05,
                             ledger=ledger, save_json=tmp_path / "ray.json"),
        ledger,
    )
    run = dict(uray.last_run)
    print("ray predict run:", run)
    assert run["restarts"] >= 1 and pid in run["pids"] and run["pids"][-1] != pid, run
    assert run["batches_done"] == run["batches"] >= N_IMAGES // 50, run  # Ray Data may split at block edges
    assert run["retries"] >= 0 and run["batch_attempts"] == run["batches"] + run["retries"], run
    # every image exactly once, in order, equal to the single-process results
    assert [n for n, _ in res] == [f.name for f in files]
    with unideploy.load(model, conf=0.05, threads=1) as pred:
        ref = pred([str(f) for f in files])
    total = 0
    for (name, det), r in zip(res, ref):
        assert not isinstance(det, str), (name, det)
        np.testing.assert_array_equal(det.xyxy, r.xyxy, err_msg=name)
        np.testing.assert_array_equal(det.confidence, r.confidence, err_msg=name)
        np.testing.assert_array_equal(det.class_id, r.class_id, err_msg=name)
        total += len(det)
    assert total > N_IMAGES  # random weights at conf 0.05: boxes on every image, a real comparison
    ids = {rec["image_id"] for rec in __import__("json").loads((tmp_path / "ray.json").read_text())}
    assert ids <= set(range(1, N_IMAGES + 1)) and len(ids) > N_IMAGES // 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_evaluate_survives_a_killed_worker(ray_local, tiny, many_images, tmp_path):
    from unideploy import ray as uray
    from unideploy.tools.evaluate import evaluate

    model = model_for(tiny, "onnxruntime")
    names = unideploy.read_spec(model).names
    root = tmp_path / "eval"  # the first 600 images and their labels (hard links): the same kill, a shorter job
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
        for f in sorted((many_images / sub).iterdir())[:N_EVAL]:
            os.link(f, root / sub / f.name)
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": names}))
    ledger = uray.new_ledger()
    got, pid = _run_with_kill(lambda: uray.evaluate(model, data, concurrency=2, batch_size=25, ledger=ledger), ledger)
    print("ray evaluate run:", uray.last_run)
    assert got["images"] == N_EVAL and not got["skipped"]
    assert got["ray_restarts"] >= 1 and got["ray_retries"] == uray.last_run["retries"], (got, uray.last_run)
    ref = evaluate(model, data, threads=1)
    for k in ("mAP50-95", "mAP50", "mAP75"):
        assert got[k] == ref[k], k
