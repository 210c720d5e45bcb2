"""Reliability at run time: soak (short), concurrency, teardown, long corrupted video.

* the soak harness (benchmarks/soak.py) passes a short run on every backend and FAILS a deliberately leaking stub;
* 4 and 8 threads sharing one predictor for thousands of calls (single images, lists, streams) give the
  single-threaded results (<= 1e-5) without deadlock; OpenVINO keeps one infer request per calling thread;
* creating and closing a predictor 100 times per backend (with a prediction and an abandoned stream each time)
  leaves RSS, Python threads, OS threads and open files where they were, 8 threads doing it at once do not crash,
  and closing a predictor while another thread streams from it ends that stream instead of hanging;
* a long generated video with 5% corrupted frames and a cut tail: every good frame predicted once, in order,
  with the clean video's results; skipped frames counted and the early end reported (VideoStats).
Every test here runs under a hard timeout (pytest-timeout).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import unideploy
from conftest import REPO, scene
from reliability_helpers import BACKENDS, close_during_stream, model_for, snapshot
from unideploy.core.sources import Source


@pytest.fixture(scope="module")
def soak_module():
    spec = importlib.util.spec_from_file_location("unideploy_soak", REPO / "benchmarks" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def soak_data(soak_module, tmp_path_factory):
    d = tmp_path_factory.mktemp("soak")
    return soak_module.make_images(d / "images", 16), soak_module.make_video(d / "video.avi", 250)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("conc")
    rng = np.random.default_rng(4)
    out = []
    for i in range(12):
        p = d / f"{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"
        cv2.imwrite(str(p), scene(rng, int(rng.integers(50, 260)), int(rng.integers(50, 260))))
        out.append(p)
    return out


# --------------------------------------------------------------------------------------------- soak


def _soak_in_child(model: Path, backend: str, soak_data, extra_args: str, fields: str) -> dict:
    """``benchmarks/soak.py``'s ``soak`` over the soak data (2,000 predictions, 1 thread) in a fresh process; its
    ``passed``, ``reasons``, ``limit_mb`` and the ``fields`` (Python dict items over ``r``) as a dict."""
    images, video = soak_data
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('unideploy_soak', {str(REPO / 'benchmarks' / 'soak.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)\n"
        f"r = mod.soak({str(model)!r}, {backend!r}, {[str(p) for p in images]!r}, "
        f"{str(video)!r}, 2000, progress=False, threads=1{extra_args})\n"
        "print('RESULT ' + json.dumps({'passed': r.passed, 'reasons': r.reasons, 'limit_mb': r.limit_mb, "
        f"{fields}}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=880)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-2000:]
    return json.loads(line[-1][7:])


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", BACKENDS)
def test_short_soak_passes(tiny, soak_data, backend):
    # In a fresh process, as a soak runs in practice: inside a pytest process that has already run hundreds of tests,
    # threads other tests left behind (Ray's driver, servers) open and close files of their own while the soak counts
    # this process's open files (seen once: "open files grew 34 -> 35" in the full suite, never alone).
    r = _soak_in_child(model_for(tiny, backend), backend, soak_data, "",
                       "'predictions': r.predictions, 'video_frames': r.video_frames, 'errors': r.errors, "
                       "'samples': len(r.samples), 'cycles': len(r.cycles)")
    assert r["predictions"] == 2000 and r["video_frames"] > 400 and r["errors"] == 0, r
    assert r["passed"], r["reasons"]
    assert r["limit_mb"] <= 100 and r["samples"] >= 50 and r["cycles"] >= 3, r


@pytest.mark.timeout(900)
def test_soak_catches_a_leaking_stub(tiny, soak_data):
    # In a fresh process: inside a pytest process that has already run hundreds of tests, a 2 GB heap full of
    # freed blocks absorbs the stub's leak without RSS growing, and the check would pass for the wrong reason.
    r = _soak_in_child(model_for(tiny, "onnxruntime"), "onnxruntime", soak_data,
                       ", leak_kb=128",  # ~125 MB leaked over the second half
                       "'growth_mb': r.growth_mb")
    assert not r["passed"]
    assert any("RSS grew" in why for why in r["reasons"]), r["reasons"]
    assert r["growth_mb"] > r["limit_mb"]


def test_soak_judge_on_synthetic_samples(soak_module):
    S = soak_module.Sample
    flat = [S(n, n / 100, 500.0 + (n % 7) * 0.1, 8, 12) for n in range(0, 10001, 100)]
    assert soak_module.judge(flat, "x").passed
    leak = [S(s.n, s.t, s.rss_mb + s.n * 0.01, 8, 12) for s in flat]  # 1 KB per prediction: 50 MB in the 2nd half
    r = soak_module.judge(leak, "x")
    assert not r.passed and r.limit_mb == pytest.approx(27.5, abs=0.2)
    threads = [S(s.n, s.t, 500.0, 8 + (s.n > 9000), 12) for s in flat]
    assert "threads grew 8 -> 9" in soak_module.judge(threads, "x").reasons
    fds = [S(s.n, s.t, 500.0, 8, 12 + (s.n > 9000)) for s in flat]
    assert "open files grew 12 -> 13" in soak_module.judge(fds, "x").reasons


# -------------------------------------------------------------------------------------- concurrency


def _same(a, b, where: str) -> None:
    assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} detections"
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-5, err_msg=where)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5, err_msg=where)
    np.testing.assert_array_equal(a.class_id, b.class_id, err_msg=where)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("n_threads", [4, 8])
@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_sharing_one_predictor(tiny, files, backend, n_threads):
    calls_total = 2000
    model = model_for(tiny, backend)
    arrays = [cv2.imread(str(f)) for f in files]
    with unideploy.load(model, backend=backend, conf=0.05) as pred:
        ref = [pred(a) for a in arrays]
        assert sum(len(r) for r in ref) > 0
        errors: list[BaseException] = []
        counts = [0] * n_threads
        barrier = threading.Barrier(n_threads)

        def work(k: int) -> None:
            rng = np.random.default_rng(k)
            try:
                barrier.wait()
                while counts[k] < calls_total // n_threads:
                    step = counts[k]
                    if step % 97 == 13:  # now and then a whole stream, concurrently with the other threads' calls
                        for o in pred.stream(files[:5]):
                            _same(o.result, ref[o.item.index], f"thread {k} stream {o.item.name}")
                        counts[k] += 5
                    elif step % 5 == 0:  # a list of paths
                        idx = rng.choice(len(files), 3, replace=False)
                        for i, r in zip(idx, pred([files[i] for i in idx])):
                            _same(r, ref[i], f"thread {k} list {files[i].name}")
                        counts[k] += 3
                    else:
                        i = int(rng.integers(len(arrays)))
                        _same(pred(arrays[i]), ref[i], f"thread {k} call {files[i].name}")
                        counts[k] += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(n_threads)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 600
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), f"deadlock: threads still running after 600 s, counts {counts}"
        assert not errors, errors[0]
        assert sum(counts) >= calls_total
        if backend == "openvino":  # one infer request per thread that called run(), never shared
            reqs = pred.session._requests
            assert len(reqs) == len({id(r) for r in reqs}) <= n_threads + 1


# ----------------------------------------------------------------------------------------- teardown

CYCLES = r"""
import gc, json, os, sys, threading
import cv2, unideploy
from unideploy.tools.bench.timers import open_fds, os_threads
from unideploy.testing import create_close_cycle
model, backend, files = sys.argv[1], sys.argv[2], sys.argv[3:]
img = cv2.imread(files[0])

def snap():
    gc.collect()
    rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return {"rss_mb": rss, "py_threads": threading.active_count(), "os_threads": os_threads(), "fds": open_fds()}

def cycle():
    create_close_cycle(model, img, files, backend=backend)

for _ in range(10):  # warm-up: runtime thread pools, caches, allocator arenas
    cycle()
before = snap()
for _ in range(100):
    cycle()
after = snap()
errors = []
def work():  # then 8 threads creating and closing their own predictors at once (a crash fails the test)
    try:
        for _ in range(10):
            cycle()
    except BaseException as e:  # noqa: BLE001
        errors.append(repr(e))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("RESULT " + json.dumps({"before": before, "after": after, "errors": errors[:3], "heavy": sorted(m for m in ("torch", "ultralytics") if m in sys.modules)}))
"""


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", BACKENDS)
def test_create_close_100_times(tiny, files, backend):
    """In a fresh process (no torch, no other test's threads): 10 warm-up + 100 measured create/predict/abandon a
    stream/close cycles, then 8 threads x 10 cycles at once; a native crash fails this test instead of the whole
    session. (OpenVINO crashed here now and then while every predictor made its own ``ov.Core``; the backend
    shares one Core per process since, and ``benchmarks/ov_teardown.py`` runs the long version.)"""
    import signal

    model = model_for(tiny, backend)
    proc = subprocess.run(
        [sys.executable, "-c", CYCLES, str(model), backend, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=850,
    )
    if proc.returncode < 0:
        pytest.fail(f"the process died with {signal.Signals(-proc.returncode).name}:\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    before, after = res["before"], res["after"]
    assert res["heavy"] == [] and res["errors"] == [], res
    assert after["py_threads"] <= before["py_threads"], res
    assert after["os_threads"] <= before["os_threads"], res
    assert after["fds"] <= before["fds"], res
    assert after["rss_mb"] - before["rss_mb"] < 25, res  # < 0.25 MB per create/close


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/task and glibc pthread keys: Linux")
def test_join_returns_before_the_os_thread_ends_and_wait_native_exit_waits():
    """The premise of the backend's release order, shown without OpenVINO: ``Thread.join()`` returns while the OS
    thread still runs native thread-exit work (here a pthread key destructor: ``usleep(300 ms)``, standing in for
    oneTBB's and C++ ``thread_local`` cleanup); ``wait_native_exit`` waits for it to end, and skips live threads.
    (Suspected, not shown, to be the OpenVINO teardown crash's cause: docs/reliability.md "Teardown".)"""
    import ctypes
    import os

    from unideploy.runtime.backends.openvino import wait_native_exit

    libc = ctypes.CDLL(None)
    key = ctypes.c_uint()
    assert libc.pthread_key_create(ctypes.byref(key), ctypes.cast(libc.usleep, ctypes.c_void_p)) == 0
    try:
        def body():  # the destructor runs at the OS thread's exit, after the Python side has finished
            libc.pthread_setspecific(key, ctypes.c_void_p(300_000))

        t = threading.Thread(target=body)
        t.start()
        t.join()
        task = f"/proc/self/task/{t.native_id}"
        assert os.path.exists(task), "join() returned after the OS thread had ended: the premise does not hold"
        t0 = time.perf_counter()
        assert wait_native_exit([t]) == 1
        assert not os.path.exists(task)
        assert time.perf_counter() - t0 < 1.0
        assert wait_native_exit([threading.current_thread()]) == 0  # alive: not waited for
    finally:
        libc.pthread_key_delete(key)


@pytest.mark.timeout(120)
def test_openvino_session_waits_for_and_forgets_ended_threads(tiny, files):
    """Threads that ran the OpenVINO session are remembered until they end, then waited for and forgotten (a
    predictor streaming for days must not keep every ended worker thread)."""
    model = model_for(tiny, "openvino")
    with unideploy.load(model, backend="openvino") as p:
        p(cv2.imread(str(files[0])))
        for _ in range(3):
            assert len(list(p.stream(files[:4]))) == 4
        session = p.session
        assert threading.current_thread() in session._threads  # the caller's own request: alive, kept
        assert all(t.is_alive() for t in session._threads), session._threads  # stream workers: forgotten
        worker = threading.Thread(target=p, args=(cv2.imread(str(files[1])),))
        worker.start()
        worker.join()
        assert worker in session._threads
    assert session._threads == {threading.current_thread()}  # close() waited for the ended worker and forgot it


@pytest.mark.timeout(240)
def test_processes_sharing_an_openvino_cache_survive_blob_eviction(tiny, tmp_path):
    """Three processes load -> predict -> close the same OpenVINO model 40 times from one cache folder while another
    process deletes its blobs at random (0.05-0.5 s): every process must exit 0. OpenVINO writes blobs in place and
    has no lock between processes: before the backend's folder lock (and one retry of a compile whose blob vanished)
    a process failed in 10 of 10 such runs ('filesystem error: cannot set permissions', a blob gone between check
    and read); plain OpenVINO dies of SIGBUS (benchmarks/ov_cache_race.py, docs/reliability.md "A cache shared by
    processes")."""
    import argparse

    model = model_for(tiny, "openvino")
    spec = importlib.util.spec_from_file_location("unideploy_ov_cache_race", REPO / "benchmarks" / "ov_cache_race.py")
    race = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(race)
    args = argparse.Namespace(kind="unideploy", evict="delete", procs=3, cycles=40, delete_every=(0.05, 0.5),
                              prune_mb=0.001, timeout=200, python=sys.executable, src=None)
    r = race.one_run(args, Path(model), tmp_path / "cache")
    assert r["clean"], r["children"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_abandoned_stream_is_joined_when_collected(tiny, files, backend):
    model = model_for(tiny, backend)
    with unideploy.load(model, backend=backend) as p:
        list(p.stream(files[:2]))
        base = snapshot()
        for _ in range(5):
            gen = p.stream(files * 3)
            next(gen)
            del gen  # the generator's finally stops and joins its threads
            gc.collect()
        after = snapshot()
    assert after["py_threads"] <= base["py_threads"], (base, after)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_close_while_another_thread_streams_does_not_hang(tiny, soak_data, backend):
    _, video = soak_data
    p = unideploy.load(model_for(tiny, backend), backend=backend)
    end = close_during_stream(p, video, pause=0.005, timeout=120)
    assert not end.startswith("crashed"), end


# -------------------------------------------------------------------------------------------- video


@pytest.mark.timeout(600)
def test_long_video_with_corrupt_frames_and_cut_tail(tiny, soak_module, tmp_path):
    n = 400
    clean = soak_module.make_video(tmp_path / "clean.avi", n)
    data = bytearray(clean.read_bytes())
    soi = []
    i = data.find(b"\xff\xd8\xff")
    while i >= 0:
        soi.append(i)
        i = data.find(b"\xff\xd8\xff", i + 3)
    assert len(soi) == n
    rng = np.random.default_rng(9)
    corrupt = sorted(int(k) for k in rng.choice(np.arange(1, 300), 20, replace=False))  # 5% of the frames
    for k in corrupt:  # the JPEG of the frame wiped (the AVI chunk around it intact), all of it or all but SOI
        end = data.find(b"\xff\xd9", soi[k]) + 2
        a = soi[k] + (0 if k % 2 else 2)
        data[a:end] = b"\0" * (end - a)
    cut = 350
    bad = tmp_path / "bad.avi"
    bad.write_bytes(bytes(data[: soi[cut] + 100]))  # frames from 350 on are gone
    src = Source(bad)
    with unideploy.load(model_for(tiny, "onnxruntime"), conf=0.05) as p:
        outs = list(p.stream(src))
        frames = [o.item.frame for o in outs]
        expected = [k for k in range(cut) if k not in corrupt]
        assert frames == expected
        assert all(o.ok for o in outs)
        st = src.stats
        assert (st.decoded, st.skipped, st.expected, st.ended_early) == (len(expected), len(corrupt), n, True)
        assert f"ended early after frame {cut} of {n} expected" in st.describe()
        cap = cv2.VideoCapture(str(clean))
        good = [cap.read()[1] for _ in range(cut)]
        cap.release()
        for o in outs[::25]:
            _same(o.result, p(good[o.item.frame]), f"frame {o.item.frame}")
