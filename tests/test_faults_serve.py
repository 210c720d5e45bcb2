"""Fault: a Ray Serve model replica killed under load (issue #20 item 4).

``build_app`` with 2 replicas on a local Ray; 3 localhost clients post a small JPEG in a loop (10 s timeout per
request) for 6 s, one replica process is killed (SIGKILL by pid), the load goes on for 16 s. Every request gets an
answer: 200, or an error status with a one-line JSON body (never Ray's plain-text 500, never a hung connection);
the killed replica is replaced by a new process; the throughput comes back within 20 % of the one before the kill.
The figures of a longer run are in benchmarks/results/serve_faults.json (``benchmarks/serve_faults.py``).
"""

from __future__ import annotations

import importlib.util
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO
from reliability_helpers import model_for
from unideploy.testing import free_port

pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("requests")
pytest.importorskip("psutil")


@pytest.fixture(scope="module")
def faults():
    spec = importlib.util.spec_from_file_location("unideploy_serve_faults", REPO / "benchmarks" / "serve_faults.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replica_killed_under_load(tiny, faults):
    import ray
    import requests
    from ray import serve

    from unideploy.apps import distributed
    from unideploy.apps.serving import build_app

    jpg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8))[1].tobytes()
    distributed.init(num_cpus=4)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(model_for(tiny, "onnxruntime"), num_replicas=2, num_cpus=1, max_batch_size=4),
                  name="unideploy", route_prefix="/")
        before = faults.wait_replicas(2, set(), 120)
        assert len(before) == 2, before
        url = f"http://127.0.0.1:{port}"
        res = faults.load_with_kill(url + "/predict", jpg, faults.kill_one, clients=3, before=6, after=16, timeout=10)
        after = faults.wait_replicas(2, {res["killed_pid"]}, 60)
        info = requests.get(url + "/", timeout=30).json()
        ok = requests.post(url + "/predict", data=jpg, headers={"Content-Type": "image/jpeg"}, timeout=30)
    finally:
        serve.shutdown()
        ray.shutdown()
    print("serve fault run:", {k: v for k, v in res.items() if k != "error_times_s"}, info["replica_retries"])
    assert res["killed_pid"] in before and len(after) == 2 and res["killed_pid"] not in after, (before, after)
    assert res["requests"] > 50
    # every request answered: 200 or a JSON one-line error; no client timeout, no refused/reset connection
    assert "timeout" not in res["by_class"] and "connection error" not in res["by_class"], res["by_class"]
    assert all(c == "200" or c.endswith(" json") for c in res["by_class"]), res["error_examples"]
    assert res["longest_s"] < 10
    assert res["recovery_s"] is not None, res["throughput_bins"]
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1
