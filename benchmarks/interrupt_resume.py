"""Interrupt ``unideploy predict`` and ``preprocess`` at random points, resume, compare with an uninterrupted run.

Each round starts a fresh output folder and runs the command with ``--resume`` again and again, sending SIGINT or
SIGTERM at a random moment after the run has written its first new file, until a run completes; then every
output file (hidden ones included) must equal the uninterrupted run's byte for byte. Per interrupt it records the
signal, the exit status, the items the message said were done, and how many items the next run redid (work lost to
the interrupt). Prints a table and writes JSON.

    python benchmarks/interrupt_resume.py                      # 5 rounds of predict, 2 of preprocess
    python benchmarks/interrupt_resume.py --rounds 10 --out benchmarks/results/interrupt_resume.json
"""

from __future__ import annotations

import argparse
import filecmp
import json
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "src/unideploy/assets/demo/shapes_yolov8.onnx"
VAL = REPO / "src/unideploy/assets/demo/val/images"
CLI = [sys.executable, "-m", "unideploy"]
LINE = re.compile(r"^interrupted by (SIGINT|SIGTERM): (\d+) of (\d+)")


def handles_sigterm(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return bool(int(re.search(r"^SigCgt:\s*([0-9a-f]+)", text, re.M).group(1), 16) >> (signal.SIGTERM - 1) & 1)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def identical(a: Path, b: Path) -> bool:
    names = tree(a)
    if names != tree(b):
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def run_round(args: list[str], outs: list[str], watch: Path, rng: random.Random, max_interrupts: int) -> dict:
    events = []
    t0 = time.perf_counter()
    for _ in range(max_interrupts):
        before = len(list(watch.glob("*"))) if watch.exists() else 0
        proc = subprocess.Popen([*CLI, *args, *outs, "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        while proc.poll() is None and not (watch.exists() and len(list(watch.glob("*"))) > before
                                           and handles_sigterm(proc.pid)):
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        sig = rng.choice([signal.SIGINT, signal.SIGTERM])
        if proc.poll() is None:
            proc.send_signal(sig)
        _, err = proc.communicate()
        m = LINE.match(err.strip().splitlines()[-1]) if err.strip() else None
        if proc.returncode in (0, 1, -sig) and not m:
            break
        events.append({"signal": sig.name, "exit": proc.returncode, "done": int(m.group(2)) if m else None,
                       "expected_exit": 128 + sig, "ok": proc.returncode == 128 + sig and m is not None})
    final = subprocess.run([*CLI, *args, *outs, "--resume"], capture_output=True, text=True)
    return {"events": events, "final_exit": final.returncode, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/interrupt_resume.json"))
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="interrupt_resume_"))
    imgs = work / "images"
    imgs.mkdir()
    for p in sorted(VAL.iterdir())[: a.images]:
        shutil.copy(p, imgs / p.name)
    (imgs / "val_00010b.jpg").write_text("not an image\n")  # a skipped item, carried across resumes
    stages = {
        "predict": (["predict", str(MODEL), str(imgs), "-q", "--conf", "0.3"],
                    lambda d: ["--save-json", f"{d}/preds.json", "--save-txt", f"{d}/txt", "--save-img", f"{d}/img",
                               "--save-jsonl", f"{d}/preds.jsonl"], lambda d: d / "img", a.rounds),
        "preprocess": (["preprocess", str(MODEL), str(imgs)], lambda d: ["--out", str(d)], lambda d: d,
                       max(1, a.rounds // 2)),
    }
    results: dict = {"seed": seed, "images": a.images + 1, "machine": platform.machine(),
                     "python": platform.python_version(), "load_before": Path("/proc/loadavg").read_text().split()[:3],
                     "stages": {}}
    for name, (args, outs, watch, rounds) in stages.items():
        ref = work / f"{name}_ref"
        subprocess.run([*CLI, *args, *outs(ref)], capture_output=True, text=True)
        rows = []
        for r in range(rounds):
            out = work / f"{name}_{r}"
            row = run_round(args, outs(out), watch(out), rng, max_interrupts=4)
            row["identical"] = identical(ref, out)
            rows.append(row)
            ev = row["events"]
            print(f"{name:10s} round {r}: {len(ev)} interrupt(s) "
                  f"{[(e['signal'][3:], e['exit'], e['done']) for e in ev]}  final exit {row['final_exit']}  "
                  f"identical: {row['identical']}", flush=True)
        results["stages"][name] = rows
    results["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    all_rows = [r for rows in results["stages"].values() for r in rows]
    results["summary"] = {
        "rounds": len(all_rows),
        "interrupts": sum(len(r["events"]) for r in all_rows),
        "exit_status_and_line_ok": sum(e["ok"] for r in all_rows for e in r["events"]),
        "identical_rounds": sum(r["identical"] for r in all_rows),
    }
    print(json.dumps(results["summary"]))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
