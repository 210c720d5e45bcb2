"""Shared fixtures: deterministic test images and tiny random-weight models exported by Ultralytics.

Models are built from their configs (no download), with the classification bias raised so that random
weights produce many boxes of spread-out scores and NMS is exercised.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")


def _session_dir(var: str, prefix: str) -> None:
    """Point `var` at a fresh temporary folder unless already set; the folder is removed when this process exits.

    Child processes inherit the variable and reuse the folder. Each pytest run used to leave two folders in /tmp
    (the model cache grew by ~100 MB a run), and CI shares its disk.
    """
    if not os.environ.get(var):
        d = tempfile.mkdtemp(prefix=prefix)
        os.environ[var] = d
        atexit.register(shutil.rmtree, d, True)


_session_dir("YOLO_CONFIG_DIR", "yolo_cfg_")
_session_dir("UNIDEPLOY_CACHE", "unideploy_cache_")

from unideploy.testing import build_random_yolo, randomise, scene  # noqa: F401,E402  (re-exported; after the env vars above)

#: --doctest-modules would import the runtime doubles (rknnlite, acl, ais_bench) into this process at collection,
#: and a later find_spec("rknnlite") would then see a board; tests put them on sys.path themselves when needed
collect_ignore = ["doubles"]

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


SIZES = [(480, 640), (640, 480), (720, 1280), (1280, 720), (24, 16), (16, 40), (1080, 1920), (333, 517),
         (517, 333), (100, 300), (300, 100), (640, 640), (32, 32), (250, 251), (1000, 750), (240, 320),
         (401, 199), (199, 401)]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """The reliability tests' tiny random-weight YOLOv8n (64x64; ONNX + OpenVINO IR), built once per session."""
    from reliability_helpers import tiny_model_files  # imports this module: not at the top

    return tiny_model_files(tmp_path_factory)


@pytest.fixture(scope="session")
def task_demo_onnx(tmp_path_factory) -> dict[str, Path]:
    """The bundled -seg/-pose/-obb demo checkpoints exported to ONNX at 96 px (Ultralytics' exporter), once per
    session: the accelerator and Serve task tests share them."""
    import unideploy
    from unideploy.apps.demo import ASSETS

    d = tmp_path_factory.mktemp("task_demo_onnx")
    out = {}
    for t in ("seg", "pose", "obb"):
        pt = d / f"{t}.pt"
        shutil.copy(ASSETS / f"shapes_yolov8_{t}.pt", pt)
        out[t] = Path(unideploy.export(pt, to="onnx", imgsz=96))
    return out


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


@pytest.fixture(scope="session")
def yolo_models(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """YOLOv8n at 320x320 and YOLO11n at 256x320 (H x W), random weights, as ONNX and OpenVINO IR."""
    pytest.importorskip("ultralytics")
    pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("models")
    return {
        "yolov8n": build_random_yolo("yolov8n.yaml", d, 320, openvino=has_module("openvino")),
        "yolo11n": build_random_yolo("yolo11n.yaml", d, (256, 320), openvino=has_module("openvino")),
    }
