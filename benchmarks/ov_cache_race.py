"""Several processes compiling one OpenVINO model from one shared cache folder: does any of them die?

OpenVINO's file cache (``CACHE_DIR``) writes a compiled blob straight to its final name and reads blobs through a
memory map, with no lock between processes. Where a blob is missing (first use, or evicted: unideploy's size cap,
a user's ``rm``), several processes compile it at once: one maps the blob while another writes it in place (a
mapped page past the file's end is a SIGBUS), or a reader deletes a half-written blob it cannot import and the
writer fails. Each run starts ``--procs`` child processes, each doing ``--cycles`` cycles on the same model and
folder while blobs are evicted; a run is clean when every child exits 0.

Kinds of child:

* ``plain``: nothing but ``openvino`` (the minimal reproduction): ``compile_model(xml, "CPU", {"CACHE_DIR": d})``
  -> one inference -> drop, with a separate process deleting the folder's blobs at random intervals (``--evict
  delete``);
* ``unideploy``: ``unideploy.load(model, backend="openvino", cache_dir=d)`` -> predict -> close. ``--evict prune``
  evicts as unideploy itself does on a full cache: ``cache_max_mb`` tiny, so each process's pruning after its compile
  deletes the blobs of the others; ``--evict delete`` as for plain. ``--src`` runs another checkout's unideploy
  (e.g. the backend before its folder lock, :func:`unideploy.core.cache.folder_lock`).

    python benchmarks/ov_cache_race.py --kind plain --runs 10
    python benchmarks/ov_cache_race.py --kind unideploy --runs 10
    git worktree add /tmp/before 2e43a6a && python benchmarks/ov_cache_race.py --src /tmp/before/src --name before
    python benchmarks/ov_cache_race.py --venv /tmp/ov2024/bin/python --kind plain   # another OpenVINO version

The model is a random-weight YOLOv8n IR at 64 px (Ultralytics) unless ``--model`` names an ``.xml``. Prints a line
per run and a summary; writes ``--json`` (default benchmarks/results/ov_cache_race.json, one entry per
configuration, merged into what the file holds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
HERE = Path(__file__).resolve().parent

CHILD_PLAIN = r"""
import sys
import numpy as np
import openvino as ov
xml, cache, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
core = ov.Core()
for _ in range(cycles):
    compiled = core.compile_model(xml, "CPU", {"CACHE_DIR": cache})
    x = np.zeros(tuple(compiled.input(0).shape), np.float32)
    compiled(x)
    del compiled
print("OPENVINO " + ov.__version__)
"""

CHILD_UNIDEPLOY = r"""
import sys
import numpy as np
import unideploy
xml, cache, cycles, cap = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
for _ in range(cycles):
    p = unideploy.load(xml, backend="openvino", cache_dir=cache, cache_max_mb=cap)
    p(img)
    p.close()
import openvino as ov
print("OPENVINO " + ov.__version__)
print("UNIDEPLOY " + unideploy.__file__)
"""

DELETER = r"""
import glob, os, random, sys, time
folder, lo, hi = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rng = random.Random(0)
while True:
    time.sleep(rng.uniform(lo, hi))
    for f in glob.glob(os.path.join(folder, "*.blob")):
        try:
            os.unlink(f)
        except OSError:
            pass
"""


def status_of(rc: int | str) -> int | str:
    return signal.Signals(-rc).name if isinstance(rc, int) and rc < 0 else rc


def one_run(args: argparse.Namespace, model: Path, cache: Path) -> dict[str, Any]:
    """One run: ``--procs`` children on one fresh cache folder (and the deleter, with ``--evict delete``)."""
    cache.mkdir(parents=True)
    if args.kind == "plain":
        cmd = [args.python, "-c", CHILD_PLAIN, str(model), str(cache), str(args.cycles)]
    else:
        cap = args.prune_mb if args.evict == "prune" else 0
        cmd = [args.python, "-c", CHILD_UNIDEPLOY, str(model), str(cache), str(args.cycles), str(cap)]
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([str(args.src), *filter(None, [env.get("PYTHONPATH")])])
    deleter = None
    if args.evict == "delete":
        deleter = subprocess.Popen([sys.executable, "-c", DELETER, str(cache), str(args.delete_every[0]),
                                    str(args.delete_every[1])])
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(args.procs)]
    children = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, args.timeout - (time.perf_counter() - t0)))
            rc: int | str = p.returncode
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            rc = "timeout"
        version = [ln[9:] for ln in out.splitlines() if ln.startswith("OPENVINO ")]
        where = [ln[10:] for ln in out.splitlines() if ln.startswith("UNIDEPLOY ")]
        err_lines = [ln for ln in err.splitlines() if ln.strip()]
        children.append({"status": status_of(rc), "openvino": version[0] if version else None,
                         **({"unideploy": where[0]} if where else {}),
                         "error": "" if rc == 0 else "\n".join(err_lines[-4:])[-600:]})
    if deleter is not None:
        deleter.kill()
        deleter.wait()
    return {"clean": all(c["status"] == 0 for c in children), "seconds": round(time.perf_counter() - t0, 1),
            "load_after": round(os.getloadavg()[0], 2), "children": children}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("plain", "unideploy"), default="unideploy")
    ap.add_argument("--evict", choices=("prune", "delete", "none"), default=None,
                    help="how blobs leave the folder meanwhile (default: prune for unideploy, delete for plain)")
    ap.add_argument("--src", type=Path, default=None, help="unideploy: the children import unideploy from this "
                    "folder (another checkout's src/) instead of the installed one")
    ap.add_argument("--procs", type=int, default=3, help="child processes per run, all on one folder")
    ap.add_argument("--cycles", type=int, default=40, help="compiles per child")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--prune-mb", type=float, default=0.001, help="cache_max_mb of the children with --evict prune")
    ap.add_argument("--delete-every", type=float, nargs=2, default=(0.05, 0.5), metavar=("MIN_S", "MAX_S"),
                    help="--evict delete: seconds between deletions, drawn uniformly")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run")
    ap.add_argument("--python", default=sys.executable, help="the children's interpreter (another OpenVINO version)")
    ap.add_argument("--model", type=Path, default=None, help="an OpenVINO .xml (default: build a tiny YOLOv8n)")
    ap.add_argument("--name", default=None, help="the entry's key in --json (default: from the options)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "ov_cache_race.json")
    args = ap.parse_args(argv)
    if args.evict is None:
        args.evict = "prune" if args.kind == "unideploy" else "delete"
    if args.kind == "plain" and args.evict == "prune":
        ap.error("--evict prune is unideploy's pruning: use --evict delete (or none) with --kind plain")

    work = Path(tempfile.mkdtemp(prefix="ov_cache_race_"))
    if args.model is None:  # a 64 px random-weight YOLOv8n as OpenVINO IR (needs Ultralytics and torch)
        from unideploy.testing import build_random_yolo

        args.model = Path(build_random_yolo("yolov8n.yaml", work / "model", 64, openvino=True)["openvino"])
    model = args.model
    name = args.name or f"{args.kind}_evict_{args.evict}"
    runs: list[dict[str, Any]] = []
    for k in range(args.runs):
        r = one_run(args, model, work / f"cache{k}")
        runs.append(r)
        print(f"run {k + 1}/{args.runs}: {'clean' if r['clean'] else 'DIED'} in {r['seconds']} s "
              f"({', '.join(str(c['status']) for c in r['children'])}), load {r['load_after']}"
              + ("" if r["clean"] else
                 f"  {next(c['error'] for c in r['children'] if c['status'] != 0).splitlines()[-1:]!r}"),
              flush=True)
    versions = sorted({c["openvino"] for r in runs for c in r["children"] if c["openvino"]})
    statuses: dict[str, int] = {}
    for r in runs:
        for c in r["children"]:
            statuses[str(c["status"])] = statuses.get(str(c["status"]), 0) + 1
    entry = {
        "kind": args.kind, "evict": args.evict, "src": str(args.src) if args.src else None,
        "procs": args.procs, "cycles_per_child": args.cycles,
        "prune_mb": args.prune_mb if args.evict == "prune" else None,
        "delete_every_s": list(args.delete_every) if args.evict == "delete" else None,
        "runs": len(runs), "clean": sum(r["clean"] for r in runs), "child_statuses": statuses,
        "openvino": versions, "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
        "run_results": runs,
    }
    old = json.loads(args.json.read_text()) if args.json.exists() else {}
    old[name] = entry
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(old, indent=1) + "\n")
    print(f"{name}: {entry['clean']}/{len(runs)} runs clean, child exits {statuses}, openvino {versions}")
    return 0 if entry["clean"] == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
