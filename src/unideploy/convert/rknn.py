"""The ``rknn`` target: ONNX -> Rockchip ``.rknn`` with rknn-toolkit2, run in an isolated environment.

rknn-toolkit2 pins numpy <= 1.26.4, onnx <= 1.18 and torch <= 2.4, which would break the user's main
environment, so unideploy never installs or imports it there. It creates (on first use, with
``install=True`` / ``--option install=1``) a private venv at ``~/.cache/unideploy/rknn-toolkit2/`` (or
``$UNIDEPLOY_RKNN_VENV``) and drives the toolkit through ``rknn_worker.py`` in a subprocess.
``$UNIDEPLOY_RKNN_PYTHON`` points at an existing interpreter that has rknn-toolkit2 instead.

The model takes uint8 NHWC RGB (the letterboxed image): normalisation (``spec.scale``/``mean``/``std``)
is baked in with ``config(mean_values=..., std_values=...)``. INT8 calibrates on images passed through the
model's own letterbox (``--option calib=DIR``, ``calib_count``). The sidecar spec (``<stem>.unideploy.json``)
records the target, dtype and the ONNX kept beside the model (``<stem>_rknn.onnx``), which the x86
simulator needs (it cannot run a .rknn file; it rebuilds from the ONNX).

Target options: ``target`` (rk3588, rk3576, rk3568, rk3566, rk3562, rv1103, rv1106, ...), ``dtype`` (fp16 or
int8), ``calib``, ``calib_count``, ``install``, ``quantized_algorithm`` (normal, mmse, kl_divergence),
``disable_rules`` (toolkit fusion rules to skip, comma-separated; default ``seperate_conv_rs_split``, which
rknn-toolkit2 2.5.0 crashes in on the YOLOv8/11 DFL head; ``none`` skips none).

A single output that is a Concat of differently scaled tensors (a YOLO head: box pixels next to 0-1 class
scores) loses the scores under one INT8 scale, so INT8 models end the graph before that Concat
(``load_onnx(outputs=...)``, recorded as ``extra.rknn.split_outputs``) and the backend concatenates again.

Example:
    >>> import unideploy
    >>> unideploy.export("yolov8n.pt", to="rknn", target="rk3588", dtype="int8", calib="images/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, BackendUnavailableError, InputError
from ..spec import ModelSpec, sidecar_paths

TOOLKIT = "rknn-toolkit2==2.5.0"  # its own pins come with it: numpy<=1.26.4, onnx<=1.18, torch<=2.4 (imported by rknn.api)
TARGETS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1103", "rv1106", "rv1103b", "rv1106b", "rv1126b", "rk2118")
DTYPES = ("fp16", "int8")
WORKER = Path(__file__).with_name("rknn_worker.py")
DISABLE_RULES = ("seperate_conv_rs_split",)  # rknn-toolkit2 2.5.0: IndexError in this rule on the YOLOv8 DFL head


def venv_dir() -> Path:
    base = os.environ.get("UNIDEPLOY_RKNN_VENV")
    if base:
        return Path(base)
    cache = os.environ.get("UNIDEPLOY_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unideploy")
    return Path(cache) / "rknn-toolkit2"


def toolkit_python(install: bool = False) -> str:
    """The interpreter that has rknn-toolkit2: ``$UNIDEPLOY_RKNN_PYTHON``, the private venv, or a new venv.

    Raises:
        BackendUnavailableError: no such interpreter and ``install`` is False (the message says how), or the
            installation failed.
    """
    env = os.environ.get("UNIDEPLOY_RKNN_PYTHON")
    if env:
        return env
    vdir = venv_dir()
    py = vdir / "bin" / "python"
    if py.is_file() and (vdir / ".unideploy-ok").is_file():
        return str(py)
    if not install:
        raise BackendUnavailableError(
            f"rknn-toolkit2 is not set up: unideploy runs it in its own environment ({vdir}) because it pins "
            "numpy<=1.26.4, onnx<=1.18 and torch<=2.4; create it with --option install=1 (export) / install=True, "
            "or point UNIDEPLOY_RKNN_PYTHON at a Python that has rknn-toolkit2"
        )
    try:
        subprocess.run([sys.executable, "-m", "venv", str(vdir)], check=True, capture_output=True, text=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", TOOLKIT], check=True, capture_output=True, text=True)
        subprocess.run([str(py), "-c", "from rknn.api import RKNN"], check=True, capture_output=True, text=True)
    except (subprocess.CalledProcessError, OSError) as e:
        tail = (getattr(e, "stderr", "") or str(e)).strip().splitlines()[-3:]
        raise BackendUnavailableError(f"setting up rknn-toolkit2 in {vdir} failed: {' | '.join(tail)}") from None
    (vdir / ".unideploy-ok").write_text(TOOLKIT)
    return str(py)


class ToolkitWorker:
    """A running ``rknn_worker.py`` in the toolkit environment; ``request`` sends one command and waits."""

    def __init__(self, python: str, env: dict[str, str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="unideploy_rknn_"))
        self.proc = subprocess.Popen([python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.log: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.log.append(line.rstrip())
            del self.log[:-200]

    def request(self, **req: Any) -> dict[str, Any]:
        with self._lock:
            if self.proc.poll() is not None:
                raise BackendError(f"the rknn-toolkit2 worker exited ({self.proc.returncode}): {' | '.join(self.log[-3:])}")
            self.proc.stdin.write(json.dumps(req) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise BackendError(f"the rknn-toolkit2 worker died during {req['cmd']}: {' | '.join(self.log[-5:])}")
        rep = json.loads(line)
        if not rep.get("ok"):
            why = rep.get("error") or " | ".join(ln for ln in self.log[-3:] if ln)
            raise BackendError(f"{rep.get('call')} failed (ret {rep.get('ret')}){': ' + why if why else ''}")
        return rep

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.request(cmd="close")
                self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def rknn_config(spec: ModelSpec) -> tuple[list[list[float]], list[list[float]]]:
    """mean_values / std_values on the uint8 scale that reproduce ``x * scale`` then ``(x - mean) / std``."""
    s = float(spec.scale or 1.0)
    mean = [[round(m / s, 6) for m in spec.mean]]
    std = [[round(v / s, 6) for v in spec.std]]
    return mean, std


def calibration_set(spec: ModelSpec, source: Any, count: int, folder: Path) -> Path:
    """Letterbox ``count`` images of ``source`` with the model's own preprocessing into .npy files (uint8 NHWC RGB)
    (uint8 RGB, (1, 3, H, W): rknn-toolkit2 wants .npy inputs in the ONNX model's NCHW layout) and list them in
    ``dataset.txt``, the toolkit's calibration format."""
    from ..models.base import Adapter
    from ..sources import Source

    adapter = Adapter(spec)
    lines = []
    for item in Source(source):
        if len(lines) >= count:
            break
        try:
            img = item.load()
        except Exception:
            continue
        resized, _ = adapter.resize(img)
        rgb = np.ascontiguousarray(resized[..., ::-1]) if spec.channel_order == "rgb" else resized
        p = folder / f"calib{len(lines):04d}.npy"
        np.save(p, np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]))  # the toolkit reads .npy as the ONNX's NCHW
        lines.append(str(p))
    if not lines:
        raise InputError(f"no calibration image could be read from {source!r}")
    txt = folder / "dataset.txt"
    txt.write_text("\n".join(lines) + "\n")
    return txt


def split_outputs(onnx_path: Path) -> tuple[list[str], int] | None:
    """The inputs and axis of the Concat that makes a single-output model's output (a YOLO head), else None."""
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    if len(g.output) != 1:
        return None
    node = next((n for n in g.node if g.output[0].name in n.output), None)
    if node is None or node.op_type != "Concat" or len(node.input) < 2:
        return None
    axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)
    if axis is None:
        return None
    return list(node.input), int(axis)


def onnx_to_rknn(onnx_path: Path, spec: ModelSpec, opts: Any) -> Path:
    """Convert ONNX to .rknn in the isolated toolkit environment and write the sidecar spec (the ``rknn`` target).

    Raises:
        InputError: unknown target/dtype/option, INT8 without calibration images.
        BackendUnavailableError: the toolkit environment is missing (and install was not asked for).
        BackendError: the toolkit failed (the message names the call and its return code).
    """
    extra = dict(opts.extra)
    known = {"target", "dtype", "calib", "calib_count", "install", "quantized_algorithm", "verbose", "disable_rules"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise InputError(f"unknown rknn option(s) {unknown}; valid: {', '.join(sorted(known))}")
    target = str(extra.get("target", "rk3588")).lower()
    if target not in TARGETS:
        raise InputError(f"rknn target must be one of {', '.join(TARGETS)}; got {target!r}")
    dtype = str(extra.get("dtype", "int8" if extra.get("calib") else "fp16")).lower()
    if dtype not in DTYPES:
        raise InputError(f"rknn dtype must be fp16 or int8; got {dtype!r}")
    if dtype == "int8" and not extra.get("calib"):
        raise InputError("rknn int8 needs calibration images: --option calib=DIR (20-200 images like the deployment's)")
    if spec.imgsz is None:
        raise InputError("the model's input size is unknown; pass --imgsz")
    out = opts.output(".rknn")
    if out.suffix.lower() != ".rknn":
        out = out / f"{opts.base.name}.rknn"
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = out.with_name(out.stem + "_rknn.onnx")
    shutil.copyfile(onnx_path, kept)
    python = toolkit_python(install=str(extra.get("install", "")).lower() in ("1", "true", "yes"))
    mean, std = rknn_config(spec)
    rules = extra.get("disable_rules", ",".join(DISABLE_RULES))
    rules = [r.strip() for r in str(rules).split(",") if r.strip() and r.strip().lower() != "none"]
    split = split_outputs(kept) if dtype == "int8" else None
    calib = extra.get("calib")
    if calib and Path(str(calib)).exists():
        calib = str(Path(str(calib)).resolve())  # the simulator re-calibrates from it, maybe from another cwd
    worker = ToolkitWorker(python)
    try:
        dataset = None
        if dtype == "int8":
            dataset = str(calibration_set(spec, calib, int(extra.get("calib_count", 100)), worker.tmp))
        worker.request(cmd="build", onnx=str(kept), target=target, dtype=dtype, dataset=dataset, mean=mean, std=std,
                       out=str(out), quantized_algorithm=extra.get("quantized_algorithm", "normal"),
                       verbose=bool(extra.get("verbose", False)), disable_rules=rules,
                       outputs=split[0] if split else None)
    finally:
        worker.close()
    d = spec.to_dict()
    d.update(layout="nhwc", input_dtype="uint8", batch=1)
    d["extra"] = {**d.get("extra", {}), "rknn": {"target": target, "dtype": dtype, "onnx": kept.name, "mean": mean,
                                                  "std": std, "quantized_algorithm": extra.get("quantized_algorithm", "normal"),
                                                  "calib": str(calib) if calib else None, "disable_rules": rules,
                                                  "split_outputs": split[0] if split else None,
                                                  "concat_axis": split[1] if split else None}}
    sidecar_paths(out)[0].write_text(json.dumps(d, indent=2, sort_keys=True))
    return out


__all__ = ["TARGETS", "ToolkitWorker", "calibration_set", "onnx_to_rknn", "rknn_config", "split_outputs", "toolkit_python"]
