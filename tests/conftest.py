"""Shared fixtures: deterministic test images and tiny random-weight models exported by Ultralytics.

Models are built from their configs (no download), with the classification bias raised so that random
weights produce many boxes of spread-out scores and NMS is exercised.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_cfg_"))
os.environ.setdefault("UNIDEPLOY_CACHE", tempfile.mkdtemp(prefix="unideploy_cache_"))

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered BGR image: noisy gradient background plus filled shapes of random colours."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.stack([xx / max(w, 1), yy / max(h, 1), (xx + yy) / max(h + w, 1)], -1) * rng.uniform(60, 200, 3))
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


SIZES = [(480, 640), (640, 480), (720, 1280), (1280, 720), (24, 16), (16, 40), (1080, 1920), (333, 517),
         (517, 333), (100, 300), (300, 100), (640, 640), (32, 32), (250, 251), (1000, 750), (240, 320),
         (401, 199), (199, 401)]


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """22 images: portrait, landscape, tiny, large, square, grayscale JPEG, grayscale PNG, PNG with alpha."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1234)
    for i, (h, w) in enumerate(SIZES):
        cv2.imwrite(str(d / f"img{i:02d}_{w}x{h}.jpg"), scene(rng, h, w), [cv2.IMWRITE_JPEG_QUALITY, 92])
    img = scene(rng, 360, 480)
    cv2.imwrite(str(d / "gray_jpeg.jpg"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(d / "gray_png.png"), cv2.cvtColor(scene(rng, 300, 420), cv2.COLOR_BGR2GRAY))
    rgba = np.dstack([scene(rng, 410, 300), rng.integers(0, 256, (410, 300), dtype=np.uint8)])
    cv2.imwrite(str(d / "alpha.png"), rgba)
    cv2.imwrite(str(d / "plain.png"), scene(rng, 200, 500))
    return d


def randomise(net, imgsz, bias: float = 8.0) -> None:
    """Make a random-init Ultralytics detector produce varied outputs.

    Default init makes activations vanish with depth (every box scores ~1e-4, all alike), so: set every
    BatchNorm's statistics from one training-mode pass over generated scenes, then raise the class
    logits so that scores spread over (0, 1).
    """
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


def _build_yolo(cfg: str, out_dir: Path, imgsz, openvino: bool) -> dict[str, Path]:
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO(cfg)
    randomise(model.model, imgsz)
    onnx_path = Path(model.export(format="onnx", imgsz=imgsz, simplify=True, project=str(out_dir), verbose=False))
    dest = out_dir / f"{Path(cfg).stem}.onnx"
    onnx_path.replace(dest)
    out = {"onnx": dest}
    if openvino:
        ov_dir = Path(model.export(format="openvino", imgsz=imgsz, verbose=False))
        target = out_dir / f"{Path(cfg).stem}_openvino_model"
        ov_dir.replace(target)
        out["openvino"] = next(target.glob("*.xml"))
    return out


@pytest.fixture(scope="session")
def yolo_models(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """YOLOv8n at 320x320 and YOLO11n at 256x320 (H x W), random weights, as ONNX and OpenVINO IR."""
    pytest.importorskip("ultralytics")
    pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("models")
    cwd = os.getcwd()
    os.chdir(d)  # Ultralytics writes next to the model / in the cwd
    try:
        return {
            "yolov8n": _build_yolo("yolov8n.yaml", d, 320, openvino=has_module("openvino")),
            "yolo11n": _build_yolo("yolo11n.yaml", d, (256, 320), openvino=has_module("openvino")),
        }
    finally:
        os.chdir(cwd)
