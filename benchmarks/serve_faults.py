"""Ray Serve replica loss under load: ``unideploy serve`` with 2 replicas, one killed (SIGKILL) mid-load.

Bounded localhost load: ``--clients`` threads post a small JPEG in a loop (each request with a ``--timeout``) for
``--before`` seconds, then one replica process is killed by its pid, and the load goes on for ``--after`` seconds.
Every request is classified: 200; an error status with a one-line JSON ``{"error": ...}``; an error status with
another body; a client timeout (a hung connection); a connection error. Reported:

* requests, answers by status code, malformed error bodies, timeouts, connection errors;
* throughput (200s per second) before the kill (median of 1 s bins), the lowest after it, and the recovery time:
  from the kill to the start of the first 3 s window after that low point whose throughput is within 20 % of the
  one before (:func:`recovery_time`);
* the replica pids before and after (the killed one must be replaced by a new one), when the new replica process
  appeared, and how many calls the ingress sent again after the loss (``replica_retries``).

    python benchmarks/serve_faults.py                      # prints a table, writes benchmarks/results/serve_faults.json
    python benchmarks/serve_faults.py --clients 4 --before 10 --after 30

Needs the ``ray`` extra (ray[serve]), ``requests`` and ``psutil``. The test ``tests/test_faults_serve.py`` runs a
shorter one through :func:`load_with_kill`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("YOLO_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def replica_pids(deployment: str = "unideploy") -> list[int]:
    """Pids of this machine's Ray Serve replica processes of ``deployment`` (Ray titles them
    ``ray::ServeReplica:<app>:<deployment>``)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if not cmd.startswith("ray::ServeReplica:"):
            continue
        parts = cmd[len("ray::ServeReplica:"):].split()[0].split(":")  # app, deployment[.method]
        if len(parts) > 1 and parts[1].split(".")[0] == deployment:
            out.append(p.info["pid"])
    return sorted(out)


def classify(status: int, body: bytes) -> str:
    """``"200"``, ``"<code> json"`` (a one-line JSON error) or ``"<code> other"``."""
    if status == 200:
        return "200"
    try:
        doc = json.loads(body)
        ok = isinstance(doc, dict) and isinstance(doc.get("error"), str) and "\n" not in doc["error"]
    except ValueError:
        ok = False
    return f"{status} {'json' if ok else 'other'}"


def load_with_kill(
    url: str,
    image: bytes,
    kill: Callable[[], int],
    *,
    clients: int = 4,
    before: float = 10.0,
    after: float = 30.0,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Post ``image`` to ``url`` from ``clients`` threads for ``before + after`` seconds, calling ``kill`` (which
    kills a replica and returns its pid) at ``before``; returns the counts, throughput and recovery figures."""
    import requests

    records: list[tuple[float, float, str, str]] = []  # (sent, answered, class, detail), times from t0
    lock = threading.Lock()
    t0 = time.monotonic()
    stop_at = t0 + before + after

    def client() -> None:
        s = requests.Session()
        while time.monotonic() < stop_at:
            sent = time.monotonic() - t0
            try:
                r = s.post(url, data=image, headers={"Content-Type": "image/jpeg"}, timeout=timeout)
                cls, detail = classify(r.status_code, r.content), r.text[:200] if r.status_code != 200 else ""
            except requests.Timeout:
                cls, detail = "timeout", f"no answer within {timeout} s"
            except requests.ConnectionError as e:
                cls, detail = "connection error", str(e)[:200]
            with lock:
                records.append((sent, time.monotonic() - t0, cls, detail))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, t0 + before - time.monotonic()))
    replicas = replica_pids()
    killed_at = time.monotonic() - t0
    killed = kill()
    replaced_at = None
    while time.monotonic() < stop_at:  # when does a new replica process appear?
        if replaced_at is None and set(replica_pids()) - set(replicas):
            replaced_at = time.monotonic() - t0
        time.sleep(0.1)
    for t in threads:
        t.join(before + after + timeout + 30)
    assert not any(t.is_alive() for t in threads), "a client thread hung past its timeout"
    res = summarize(records, killed_at, killed, before + after, timeout)
    res["new_replica_process_s"] = None if replaced_at is None else round(replaced_at - killed_at, 2)
    return res


def summarize(records: list[tuple[float, float, str, str]], killed_at: float, killed: int, duration: float,
              timeout: float) -> dict[str, Any]:
    """Counts by class, throughput per 1 s bin of answers, and the recovery time (see the module docstring)."""
    by: dict[str, int] = {}
    for r in records:
        by[r[2]] = by.get(r[2], 0) + 1
    bins = [0] * (int(duration) + 1)
    for _, done, cls, _ in records:
        if cls == "200" and int(done) < len(bins):
            bins[int(done)] += 1
    warm = bins[1 : int(killed_at)] or bins[: int(killed_at)] or [0]
    base = statistics.median(warm)
    k = int(killed_at)
    recovery = recovery_time(bins, killed_at, base)
    errors = [r for r in records if r[2] != "200"]
    return {
        "requests": len(records),
        "by_class": dict(sorted(by.items())),
        "answered": sum(v for c, v in by.items() if c not in ("timeout", "connection error")),
        "longest_s": round(max((d - s for s, d, _, _ in records), default=0.0), 3),
        "timeout_s": timeout,
        "killed_pid": killed,
        "killed_at_s": round(killed_at, 2),
        "throughput_before_rps": base,
        "throughput_min_after_rps": min(bins[k + 1 : -1] or [0]),
        "recovery_s": recovery,
        "throughput_bins": bins,
        "error_examples": sorted({f"{c}: {d}" for _, _, c, d in errors})[:5],
        "error_times_s": [round(s, 2) for s, _, c, _ in errors][:50],
    }


def recovery_time(bins: list[int], killed_at: float, base: float) -> float | None:
    """Seconds from the kill to the start of the first 3 s window, after the lowest 1 s bin that follows the kill,
    whose mean throughput is at least 80 % of ``base``; None if none in the run. (The dip comes a few seconds after
    the kill, when Ray Serve notices the replica is gone; the last bin, cut short by the end of the run, is left out.)"""
    first = int(killed_at) + 1  # the first whole second after the kill
    after = bins[first:-1]
    if len(after) < 3:
        return None
    trough = first + after.index(min(after))
    for start in range(trough + 1, len(bins) - 3):
        if statistics.mean(bins[start : start + 3]) >= 0.8 * base:
            return round(start - killed_at, 2)
    return None


def kill_one(deployment: str = "unideploy") -> int:
    """SIGKILL the first replica process of ``deployment``; returns its pid."""
    pids = replica_pids(deployment)
    if not pids:
        raise RuntimeError(f"no ServeReplica process of {deployment!r} found")
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def wait_replicas(n: int, exclude: set[int], timeout: float, deployment: str = "unideploy") -> list[int]:
    """Wait until ``n`` replica processes not in ``exclude`` run; returns their pids (fewer on timeout)."""
    deadline = time.monotonic() + timeout
    pids: list[int] = []
    while time.monotonic() < deadline:
        pids = [p for p in replica_pids(deployment) if p not in exclude]
        if len(pids) >= n:
            break
        time.sleep(0.2)
    return pids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model file (default: a 64x64 random-weight YOLOv8n built here)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--before", type=float, default=15.0, help="seconds of load before the kill")
    ap.add_argument("--after", type=float, default=45.0, help="seconds of load after the kill")
    ap.add_argument("--timeout", type=float, default=10.0, help="client timeout per request (s)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "serve_faults.json")
    args = ap.parse_args(argv)

    import cv2
    import numpy as np
    import ray
    import requests
    from ray import serve

    from unideploy.apps import distributed
    from unideploy.apps.serving import build_app
    from unideploy.testing import free_port

    work = Path(tempfile.mkdtemp(prefix="serve_faults_"))
    model = args.model
    if model is None:
        from unideploy.testing import build_random_yolo

        model = str(build_random_yolo("yolov8n.yaml", work, 64)["onnx"])
    img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    distributed.init(num_cpus=4)
    port = free_port()
    t = time.monotonic()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(model, num_replicas=2, num_cpus=1, max_batch_size=4, conf=0.25), name="unideploy",
              route_prefix="/")
    startup = time.monotonic() - t
    before_pids = wait_replicas(2, set(), 60)
    try:
        res = load_with_kill(f"http://127.0.0.1:{port}/predict", jpg, kill_one, clients=args.clients,
                             before=args.before, after=args.after, timeout=args.timeout)
        after_pids = wait_replicas(2, {res["killed_pid"]}, 60)
        res["replica_retries"] = requests.get(f"http://127.0.0.1:{port}/", timeout=30).json()["replica_retries"]
    finally:
        serve.shutdown()
        ray.shutdown()
    res.update(
        replicas_before=before_pids,
        replicas_after=after_pids,
        replaced=len(after_pids) == 2 and res["killed_pid"] not in after_pids,
        startup_s=round(startup, 1),
        clients=args.clients,
        ray=ray.__version__,
        python=platform.python_version(),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
    )
    print(f"{res['requests']} requests: {res['by_class']}; longest {res['longest_s']} s (timeout {args.timeout} s)")
    print(f"throughput before {res['throughput_before_rps']} req/s, lowest after the kill "
          f"{res['throughput_min_after_rps']}, back within 20 % after {res['recovery_s']} s; "
          f"replicas {before_pids} -> {after_pids} (new process after {res['new_replica_process_s']} s); "
          f"calls sent again by the ingress: {res['replica_retries']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1) + "\n")
    ok = res["replaced"] and res["recovery_s"] is not None and not any(
        c in res["by_class"] for c in ("timeout", "connection error")
    ) and all(c == "200" or c.endswith("json") for c in res["by_class"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
