"""rknn-toolkit2 in its own environment: where its Python is, the worker that drives it, calibration data.

rknn-toolkit2 pins numpy <= 1.26.4, onnx <= 1.18 and torch <= 2.4, which would break the user's main
environment, so unideploy never installs or imports it there. It creates (on first use, with
``install=True`` / ``--option install=1``) a private venv at ``~/.cache/unideploy/rknn-toolkit2/`` (or
``$UNIDEPLOY_RKNN_VENV``) and drives the toolkit through ``rknn_worker.py`` (beside this file) in a subprocess.
``$UNIDEPLOY_RKNN_PYTHON`` points at an existing interpreter that has rknn-toolkit2 instead.

Both the ``rknn`` backend (the x86 simulator) and the ``rknn`` export target
(:mod:`unideploy.tools.convert.rknn`) use this module.

Example:
    >>> worker = ToolkitWorker(toolkit_python())  # doctest: +SKIP
    >>> worker.request(cmd="close")  # doctest: +SKIP
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

from unideploy.core.cache import cache_dir
from unideploy.core.errors import BackendError, BackendUnavailableError, InputError
from unideploy.core.spec import ModelSpec
from unideploy.runtime.backends.in_model import rknn_mean_std

__all__ = ["TOOLKIT", "WORKER", "DISABLE_RULES", "venv_dir", "toolkit_python", "ToolkitWorker", "rknn_config",
           "calibration_set"]

TOOLKIT = "rknn-toolkit2==2.5.0"  # its own pins come with it: numpy<=1.26.4, onnx<=1.18, torch<=2.4 (imported by rknn.api)
WORKER = Path(__file__).with_name("rknn_worker.py")  #: the script the toolkit's Python runs
DISABLE_RULES = ("seperate_conv_rs_split",)  # rknn-toolkit2 2.5.0: IndexError in this rule on the YOLOv8 DFL head


def venv_dir() -> Path:
    base = os.environ.get("UNIDEPLOY_RKNN_VENV")
    if base:
        return Path(base)
    return cache_dir("rknn-toolkit2")


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
    """mean_values / std_values on the uint8 scale that reproduce ``x * scale`` then ``(x - mean) / std``
    (:func:`unideploy.runtime.backends.in_model.rknn_mean_std`, the RKNN part of "preprocessing in the model")."""
    return rknn_mean_std(spec)


def calibration_set(spec: ModelSpec, source: Any, count: int, folder: Path) -> Path:
    """Resize ``count`` images of ``source`` with the model family's own preprocessing (its adapter's ``resize``:
    letterbox, stretch or crop, as at prediction) into .npy files of uint8 RGB, (1, 3, H, W) (rknn-toolkit2 wants
    .npy inputs in the ONNX model's NCHW layout), and list them in ``dataset.txt``, the toolkit's calibration format.

    Raises:
        InputError: no image of ``source`` could be read.
    """
    from unideploy.core.sources import Source
    from unideploy.runtime.families import get_adapter

    family = spec.family or ("classify" if spec.task == "classify" else "yolo")
    adapter = get_adapter(family)(spec)
    order = adapter.spec.channel_order
    lines = []
    for item in Source(source):
        if len(lines) >= count:
            break
        try:
            img = item.load()
        except Exception:
            continue
        resized, _ = adapter.resize(img)
        rgb = np.ascontiguousarray(resized[..., ::-1]) if order == "rgb" else resized
        p = folder / f"calib{len(lines):04d}.npy"
        np.save(p, np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]))  # the toolkit reads .npy as the ONNX's NCHW
        lines.append(str(p))
    if not lines:
        raise InputError(f"no calibration image could be read from {source!r}")
    txt = folder / "dataset.txt"
    txt.write_text("\n".join(lines) + "\n")
    return txt
