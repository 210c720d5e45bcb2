"""Helpers for tests and benchmarks: synthetic scenes and random-weight Ultralytics models.

Random-init detectors score every box ~1e-4 (activations vanish with depth), which exercises nothing;
:func:`randomise` sets BatchNorm statistics from one pass over generated scenes and raises the class
logits, so outputs vary with the input and NMS has real work. torch / ultralytics are imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a test or benchmark server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_close_cycle(model: str | Path, img: np.ndarray, files: list[str], **load_kwargs: Any) -> None:
    """One teardown cycle: load -> predict -> start a stream and abandon it after 2 items -> close -> a call on
    the closed predictor must raise an UnideployError (SystemExit if it still predicts). What
    ``tests/test_reliability_runtime.py`` and ``benchmarks/ov_teardown.py`` repeat in child processes."""
    import unideploy
    from unideploy.core.errors import UnideployError

    p = unideploy.load(model, **load_kwargs)
    p(img)
    stream = p.stream(files)  # started and abandoned mid-way: close() must stop its threads
    next(stream)
    next(stream)
    p.close()
    try:
        p(img)
    except UnideployError:
        return  # a closed predictor refuses; it does not crash
    raise SystemExit("a closed predictor still predicted")


def scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered BGR image: noisy gradient background plus filled shapes of random colours."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / max(w, 1), yy / max(h, 1), (xx + yy) / max(h + w, 1)], -1) * rng.uniform(60, 200, 3)
    img = (base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(max(2, min(h, w) // 12), max(3, min(h, w) // 3)))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(img, (cx, cy), s, col, -1)
        elif kind == 1:
            cv2.rectangle(img, (cx - s, cy - s // 2), (cx + s, cy + s // 2), col, -1)
        else:
            pts = np.array([[cx, cy - s], [cx - s, cy + s], [cx + s, cy + s]], np.int32)
            cv2.fillPoly(img, [pts], col)
    return img


def write_scenes(folder: str | Path, sizes: list[tuple[int, int]], seed: int = 0, quality: int = 92) -> list[Path]:
    """Write one JPEG scene per (height, width) into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"img{i:04d}_{w}x{h}.jpg"
        cv2.imwrite(str(p), scene(rng, h, w), [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(p)
    return out


def randomise(net: Any, imgsz: int | tuple[int, int], bias: float = 8.0) -> None:
    """Give a random-init Ultralytics detector varied outputs (see the module docstring)."""
    import torch

    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    rng = np.random.default_rng(7)
    x = np.stack([scene(rng, h, w) for _ in range(4)])[..., ::-1].transpose(0, 3, 1, 2).copy()
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(x).float() / 255)
        for seq in net.model[-1].cv3:
            seq[-1].bias += bias
    net.eval()


def build_random_yolo(cfg: str, out_dir: str | Path, imgsz: int | tuple[int, int], openvino: bool = False) -> dict[str, Path]:
    """Build ``cfg`` (e.g. "yolov8n.yaml") with :func:`randomise`d weights and export it with Ultralytics.

    Returns {"onnx": path, "openvino": xml path (when asked)}. Needs torch and ultralytics; offline.
    """
    import os

    import torch
    from ultralytics import YOLO

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(out_dir)  # Ultralytics writes beside the model / in the cwd
    try:
        torch.manual_seed(0)
        model = YOLO(cfg)
        randomise(model.model, imgsz)
        onnx_path = Path(model.export(format="onnx", imgsz=imgsz, simplify=True, verbose=False)).resolve()
        dest = (out_dir / f"{Path(cfg).stem}.onnx").resolve()
        if onnx_path != dest:
            onnx_path.replace(dest)
        out = {"onnx": dest}
        if openvino:
            ov_dir = Path(model.export(format="openvino", imgsz=imgsz, verbose=False)).resolve()
            target = (out_dir / f"{Path(cfg).stem}_openvino_model").resolve()
            if ov_dir != target:
                ov_dir.replace(target)
            out["openvino"] = next(target.glob("*.xml"))
        return out
    finally:
        os.chdir(cwd)
