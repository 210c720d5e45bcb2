"""OpenVINO create/close stress, each run in a child process: does the process ever die (SIGSEGV, SIGABRT)?

Two kinds of child:

* ``unideploy``: cycles of *load -> predict -> start a stream and abandon it after 2 items -> close -> a call on the
  closed predictor must raise* (the cycle of ``tests/test_reliability_runtime.py``), ``--cycles`` in one thread and
  then ``--threads`` threads x ``--thread-cycles`` cycles at once, each thread with its own predictors;
* ``plain``: the same life cycle with nothing but ``openvino`` (the minimal reproduction): ``read_model`` ->
  ``compile_model`` (latency hint, a ``CACHE_DIR``) -> one infer request run with ``share_inputs=True`` -> a second
  request driven from a Python worker thread, abandoned -> everything dropped. ``--core per-cycle`` makes a new
  ``ov.Core`` for every cycle (what the backend did before it shared one), ``--core shared`` one per process;
  ``--order`` drops the Core before the compiled model and its requests (``core-first``) or after (``natural``);
  ``--worker create --workers N``: N worker threads per cycle each make and run their own request.

Flags of the unideploy child used to locate the cause (docs/reliability.md "Teardown"): ``--exit-wait off`` patches
out the backend's wait for ended worker threads' OS threads before release, ``--runner base`` runs the stream's
inference through ``session.run`` (requests made in worker threads), ``--exit-delay-ms`` makes each such thread
sleep at its OS-level exit just before OpenVINO's ``thread_local`` destructors, ``--burn N`` adds busy threads.

    python benchmarks/ov_teardown.py                                  # 20 runs of 1,000 cycles + 8 x 200 (unideploy)
    python benchmarks/ov_teardown.py --kind plain --core per-cycle --runs 20 --cycles 110 --threads 0
    python benchmarks/ov_teardown.py --runs 2 --cycles 50 --thread-cycles 20    # a quick look

The model is a random-weight YOLOv8n exported to OpenVINO IR at 64 px (built with Ultralytics unless ``--model``
names an ``.xml``). Writes a table to stdout and ``--json`` (default benchmarks/results/ov_teardown.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
HERE = Path(__file__).resolve().parent

CHILD_UNIDEPLOY = r"""
import json, os, sys, threading, time
import cv2, unideploy
from unideploy.testing import create_close_cycle
model, cycles, n_threads, thread_cycles, core_mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
files = sys.argv[6:]
img = cv2.imread(files[0])
from unideploy.runtime.backends import openvino as ovb
if core_mode == "per-cycle":  # the backend as it was before: a new ov.Core for every open()
    ovb.shared_core = lambda ov: ov.Core()
if os.environ.get("OV_TEARDOWN_EXIT_WAIT") == "off":  # the backend as it was before: no wait for ended OS threads
    ovb.wait_native_exit = lambda threads, timeout=0: 0
if os.environ.get("OV_TEARDOWN_RUNNER") == "base":  # stream inference through session.run: each worker thread
    from unideploy.runtime.backends.base import AsyncRunner  # makes its own (thread-local) infer request
    ovb.OpenVINOSession.async_runner = lambda self, requests=None: AsyncRunner(self, requests or 1)

delay_us = int(float(os.environ.get("OV_TEARDOWN_EXIT_DELAY_MS", "0")) * 1000)
if delay_us:  # a deterministic race window: each thread that made an infer request sleeps at its OS-level exit
    import ctypes  # just before OpenVINO's own thread_local destructors run (C++ TLS destructors run newest first)
    libc, marked = ctypes.CDLL(None), threading.local()
    request = ovb.OpenVINOSession._request
    def _request(self):
        req = request(self)
        if not getattr(marked, "done", False) and threading.current_thread() is not threading.main_thread():
            marked.done = True
            usleep = ctypes.cast(libc.usleep, ctypes.c_void_p)
            libc.__cxa_thread_atexit_impl(usleep, ctypes.c_void_p(delay_us), usleep)
        return req
    ovb.OpenVINOSession._request = _request
burning = threading.Event()
def burn():  # CPU load from inside the child (OpenCV releases the GIL): a busy machine widens the race window
    import numpy as np
    a = np.random.default_rng(0).integers(0, 255, (1000, 1000), dtype=np.uint8)
    while not burning.is_set():
        cv2.GaussianBlur(a, (31, 31), 0)
burners = [threading.Thread(target=burn) for _ in range(int(os.environ.get("OV_TEARDOWN_BURN", "0")))]
for t in burners: t.start()
arenas = os.environ.get("OV_TEARDOWN_ARENAS", "1")  # unideploy's default: one glibc malloc arena

def cycle():
    create_close_cycle(model, img, files, backend="openvino", malloc_arenas=None if arenas == "default" else int(arenas))

done = [0]
def heartbeat():  # progress on stderr: a run that times out shows whether it was still moving
    while True:
        time.sleep(30)
        print(f"progress: {done[0]} cycles after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
t0 = time.perf_counter()
threading.Thread(target=heartbeat, daemon=True).start()
for _ in range(cycles):
    cycle()
    done[0] += 1
t1 = time.perf_counter()
errors = []
def work():
    try:
        for _ in range(thread_cycles):
            cycle()
            done[0] += 1
    except BaseException as e:  # noqa: BLE001
        errors.append(repr(e))
threads = [threading.Thread(target=work) for _ in range(n_threads)]
for t in threads: t.start()
for t in threads: t.join()
burning.set()
for t in burners: t.join()
print("RESULT " + json.dumps({"serial_s": t1 - t0, "threads_s": time.perf_counter() - t1, "errors": errors[:3]}))
"""

CHILD_PLAIN = r"""
import gc, json, sys, threading, time
import numpy as np
import openvino as ov
model_path, cycles, n_threads, thread_cycles, core_mode, order, cache, devices, worker, n_workers = sys.argv[1:11]
cycles, n_threads, thread_cycles, n_workers = int(cycles), int(n_threads), int(thread_cycles), int(n_workers)
import ctypes, os
if os.environ.get("OV_TEARDOWN_ARENAS", "default") != "default":  # as unideploy's load() does (mallopt M_ARENA_MAX)
    ctypes.CDLL("libc.so.6").mallopt(-8, int(os.environ["OV_TEARDOWN_ARENAS"]))
shared = ov.Core() if core_mode == "shared" else None
config = {"PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": cache}
delay_us = int(float(os.environ.get("OV_TEARDOWN_EXIT_DELAY_MS", "0")) * 1000)
libc = ctypes.CDLL(None)

def delay_exit():  # as in the unideploy child: this thread sleeps at its exit, before OpenVINO's thread_local dtors
    if delay_us:
        usleep = ctypes.cast(libc.usleep, ctypes.c_void_p)
        libc.__cxa_thread_atexit_impl(usleep, ctypes.c_void_p(delay_us), usleep)

def cycle():
    core = shared if shared is not None else ov.Core()
    if devices == "query":  # as the backend's open() does: loads every device plugin into this Core
        core.available_devices
    model = core.read_model(model_path)
    compiled = core.compile_model(model, "CPU", config)
    del model
    shape = [d.get_length() for d in compiled.inputs[0].get_partial_shape()]
    req = compiled.create_infer_request()
    req.infer({0: np.random.rand(*shape).astype(np.float32)}, share_inputs=True)
    out = req.get_output_tensor(0).data.copy()
    others = [] if worker == "create" else [compiled.create_infer_request() for _ in range(n_workers)]
    def drive(k):  # "infer": a request made by the main thread; "create": the worker thread makes its own
        r = compiled.create_infer_request() if worker == "create" else others[k]
        for i in range(2):
            r.infer({0: np.random.rand(*shape).astype(np.float32)}, share_inputs=True)
            if i == 0:
                delay_exit()
        if worker == "create":
            others.append(r)  # kept past the thread's end, as a session keeps its requests until close()
    ts = [threading.Thread(target=drive, args=(k,)) for k in range(n_workers)]
    for t in ts: t.start()
    for t in ts: t.join()
    if order == "core-first":
        del core
        gc.collect()
    del req, others, compiled
    return out.shape

t0 = time.perf_counter()
for _ in range(cycles):
    cycle()
t1 = time.perf_counter()
threads = [threading.Thread(target=lambda: [cycle() for _ in range(thread_cycles)]) for _ in range(n_threads)]
for t in threads: t.start()
for t in threads: t.join()
print("RESULT " + json.dumps({"serial_s": t1 - t0, "threads_s": time.perf_counter() - t1, "errors": []}))
"""


def build_model(workdir: Path) -> Path:
    """A 64 px random-weight YOLOv8n as OpenVINO IR (needs Ultralytics and torch)."""
    from unideploy.testing import build_random_yolo

    return Path(build_random_yolo("yolov8n.yaml", workdir, 64, openvino=True)["openvino"])


def make_images(d: Path, n: int = 12) -> list[Path]:
    import cv2
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    out = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(50, 260, 2))
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        p = d / f"{i:02d}.jpg"
        cv2.imwrite(str(p), img)
        out.append(p)
    return out


def one_run(args: argparse.Namespace, model: Path, files: list[Path], cache: str, exit_wait: str) -> dict[str, Any]:
    """Run one child; returns its exit status (signal name when killed), time, load and the child's own report."""
    if args.kind == "unideploy":
        cmd = [sys.executable, "-c", CHILD_UNIDEPLOY, str(model), str(args.cycles), str(args.threads),
               str(args.thread_cycles), args.core, *map(str, files)]
    else:
        cmd = [sys.executable, "-c", CHILD_PLAIN, str(model), str(args.cycles), str(args.threads),
               str(args.thread_cycles), args.core, args.order, cache, args.devices, args.worker, str(args.workers)]
    cmd = [*shlex.split(args.wrap), *cmd]
    env = dict(os.environ)
    if args.arenas:
        env["OV_TEARDOWN_ARENAS"] = args.arenas
    env["OV_TEARDOWN_EXIT_WAIT"], env["OV_TEARDOWN_RUNNER"] = exit_wait, args.runner
    env["OV_TEARDOWN_BURN"], env["OV_TEARDOWN_EXIT_DELAY_MS"] = str(args.burn), str(args.exit_delay_ms)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        rc, err, out = proc.returncode, proc.stderr, proc.stdout
    except subprocess.TimeoutExpired as e:
        def text(b: Any) -> str:
            return b.decode(errors="replace") if isinstance(b, bytes) else str(b or "")

        rc, err, out = "timeout", text(e.stderr), text(e.stdout)
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    child = json.loads(line[-1][7:]) if line else {}
    status = rc if not isinstance(rc, int) or rc >= 0 else signal.Signals(-rc).name
    clean = rc == 0 and bool(line) and not child.get("errors")
    progress = [ln for ln in err.splitlines() if ln.startswith("progress: ")]
    arm = {"exit_wait": exit_wait} if args.kind == "unideploy" else {}
    return {"status": status, "clean": clean, "seconds": round(time.perf_counter() - t0, 1), **arm,
            "load_after": round(os.getloadavg()[0], 2), **child,
            "last_progress": progress[-1] if progress else None,
            "stderr_tail": "" if clean else "\n".join(ln for ln in err.splitlines() if not ln.startswith("progress: "))[-600:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("unideploy", "plain"), default="unideploy")
    ap.add_argument("--core", choices=("shared", "per-cycle"), default="shared", help="one Core per process (the backend's way) or a new one per cycle")
    ap.add_argument("--order", choices=("natural", "core-first"), default="natural", help="plain: drop order")
    ap.add_argument("--devices", choices=("query", "none"), default="query",
                    help="plain: ask the Core for its available_devices each cycle (as the backend does) or not")
    ap.add_argument("--exit-wait", choices=("on", "off", "alternate"), default="on",
                    help="unideploy: wait for ended worker threads' OS threads before releasing (the fix) or not; "
                    "alternate: on and off by turns, run by run, so both arms meet the same load")
    ap.add_argument("--runner", choices=("own", "base"), default="own", help="unideploy: the stream's runner: the "
                    "backend's own infer requests, or session.run from worker threads (requests made in them)")
    ap.add_argument("--burn", type=int, default=0, help="unideploy: busy threads in the child (load, as on a "
                    "shared machine: the crash grows more frequent with load)")
    ap.add_argument("--exit-delay-ms", type=float, default=0, help="each worker thread that made or ran an infer "
                    "request sleeps this long at its exit, before OpenVINO's thread_local destructors (unideploy: "
                    "with --runner base)")
    ap.add_argument("--wrap", default="", help="a command the child runs under, e.g. 'valgrind --freelist-vol="
                    "4000000000 --log-file=vg.%%p.log' or 'env LD_PRELOAD=./uaf_guard.so' (docs/reliability.md)")
    ap.add_argument("--worker", choices=("infer", "create"), default="infer",
                    help="plain: worker threads run requests the main thread made (infer) or make their own (create)")
    ap.add_argument("--workers", type=int, default=1, help="plain: worker threads per cycle")
    ap.add_argument("--arenas", default=None, help="glibc malloc arenas in the child: a number or 'default' "
                    "(default: unideploy's 1 for --kind unideploy, glibc's default for plain)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=1000, help="serial cycles per run")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--thread-cycles", type=int, default=200, help="cycles per thread")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--model", type=Path, default=None, help="an OpenVINO .xml (default: build a tiny YOLOv8n)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "ov_teardown.json")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ov_teardown_"))
    model = args.model or build_model(work / "model")
    files = make_images(work / "images")
    runs: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    for k in range(args.runs):
        exit_wait = ("on", "off")[k % 2] if args.exit_wait == "alternate" else args.exit_wait
        r = one_run(args, model, files, str(work / "cache"), exit_wait)
        runs.append(r)
        print(f"run {k + 1}/{args.runs}" + (f" (exit wait {exit_wait})" if args.exit_wait == "alternate" else "")
              + f": {r['status']} in {r['seconds']} s, load {r['load_after']}"
              + ("" if r["clean"] else f"  {r['stderr_tail'][-200:]!r}"), flush=True)
        report = write_report(args, runs)  # after every run: a long series stopped early still leaves its figures
    clean = report.get("clean", 0)
    print(f"{args.kind}: {clean}/{args.runs} runs clean "
          f"({args.cycles} cycles + {args.threads} threads x {args.thread_cycles} cycles each), openvino "
          f"{report.get('openvino')}")
    return 0 if clean == args.runs else 1


def write_report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the figures of the runs so far to ``args.json``; returns them."""
    import openvino

    clean = sum(r["clean"] for r in runs)
    report = {
        "kind": args.kind,
        "core": args.core,
        "order": args.order if args.kind == "plain" else None,
        "devices": args.devices if args.kind == "plain" else "query",
        "worker": f"{args.worker} x {args.workers}" if args.kind == "plain" else None,
        "exit_wait": args.exit_wait if args.kind == "unideploy" else None,
        "runner": args.runner if args.kind == "unideploy" else None,
        "burn_threads": args.burn if args.kind == "unideploy" else None,
        "exit_delay_ms": args.exit_delay_ms,
        "wrap": args.wrap or None,
        "malloc_arenas": args.arenas or ("1" if args.kind == "unideploy" else "default"),
        "runs_planned": args.runs,
        "runs": len(runs),
        "clean": clean,
        "cycles_per_run": args.cycles,
        "threads": args.threads,
        "thread_cycles": args.thread_cycles,
        "openvino": openvino.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "run_results": runs,
    }
    if args.exit_wait == "alternate" and args.kind == "unideploy":  # the two arms, counted apart
        report["arms"] = {w: {"runs": sum(r["exit_wait"] == w for r in runs),
                              "clean": sum(r["clean"] for r in runs if r["exit_wait"] == w),
                              "died": [r["status"] for r in runs if r["exit_wait"] == w and not r["clean"]]}
                          for w in ("on", "off")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report

if __name__ == "__main__":
    sys.exit(main())
