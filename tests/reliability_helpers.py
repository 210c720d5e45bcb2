"""Shared pieces of the reliability tests: a tiny random-weight YOLOv8n (64x64, ONNX + OpenVINO IR) built once
per session, process resource probes (RSS, threads, open files) and image-file builders."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import has_module
from unideploy.tools.bench.timers import open_fds, os_threads  # noqa: F401  (shared process probes)

TINY_IMGSZ = 64
_BUILT: dict[str, dict[str, Path]] = {}


def close_during_stream(predictor: Any, source: Any, pause: float, timeout: float) -> str:
    """Iterate ``predictor.stream(source)`` in a second thread (``pause`` seconds per result), close the predictor
    from this thread once the first result is out, and return how the stream ended: "finished after N",
    "<ErrorType> after N: message" for a UnideployError, or "crashed: <repr>" for anything else. Fails if no
    result comes or the streaming thread is still alive ``timeout`` seconds after close()."""
    from unideploy.core.errors import UnideployError

    started, outcome = threading.Event(), {}

    def consume() -> None:
        n = 0
        try:
            for _ in predictor.stream(source):
                n += 1
                started.set()
                time.sleep(pause)
            outcome["end"] = f"finished after {n}"
        except UnideployError as e:
            outcome["end"] = f"{type(e).__name__} after {n}: {e}"
        except BaseException as e:  # noqa: BLE001
            outcome["end"] = f"crashed: {e!r}"

    t = threading.Thread(target=consume, name="consumer", daemon=True)
    t.start()
    assert started.wait(timeout), "the stream gave no result"
    predictor.close()
    t.join(timeout)
    assert not t.is_alive(), "the streaming thread hung after close()"
    return outcome["end"]


def fuzz_settings():
    """Hypothesis settings of the fuzz tests: a fixed budget (``UNIDEPLOY_FUZZ_EXAMPLES``, default 300 examples),
    reproducible (derandomized, no example database), no deadline or health-check aborts."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=int(os.environ.get("UNIDEPLOY_FUZZ_EXAMPLES", "300")),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def tiny_model_files(tmp_path_factory) -> dict[str, Path]:
    """{"onnxruntime": .onnx, "openvino": .xml (when installed)} of a 64x64 random-weight YOLOv8n, built once."""
    if "tiny" not in _BUILT:
        pytest.importorskip("ultralytics")
        pytest.importorskip("torch")
        from unideploy.testing import build_random_yolo

        out = build_random_yolo(
            "yolov8n.yaml", tmp_path_factory.mktemp("tiny_models"), TINY_IMGSZ, openvino=has_module("openvino")
        )
        _BUILT["tiny"] = {"onnxruntime": out["onnx"], **({"openvino": out["openvino"]} if "openvino" in out else {})}
    return _BUILT["tiny"]


BACKENDS = ["onnxruntime", "openvino"]


def model_for(files: dict[str, Path], backend: str) -> Path:
    if backend not in files:
        pytest.skip(f"{backend} is not installed")
    return files[backend]


# -------------------------------------------------------------------------------------- resources


def rss_mb() -> float:
    """Resident set size of this process in MB (from /proc, psutil as a fallback)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 1e6


def snapshot() -> dict[str, float]:
    import gc

    gc.collect()
    return {"rss_mb": rss_mb(), "py_threads": threading.active_count(), "os_threads": os_threads(), "fds": open_fds()}


# ----------------------------------------------------------------------------------------- images


def pil_bytes(img, fmt: str, **kw) -> bytes:
    f = io.BytesIO()
    img.save(f, fmt, **kw)
    return f.getvalue()


def with_orientation(bgr: np.ndarray, orientation: int, fmt: str = "JPEG", **kw) -> bytes:
    """``bgr`` encoded with an EXIF Orientation tag (pixels stored as they are, un-rotated)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    img = Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))
    return pil_bytes(img, fmt, exif=exif if fmt == "TIFF" else exif.tobytes(), **kw)


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """The upright view of stored pixels ``img`` under EXIF ``orientation`` (1-8), as the EXIF spec defines it."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, -1)[::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](img))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def assert_same_boxes(a, b, min_iou: float = 0.99) -> None:
    """Every detection of ``a`` has a same-class detection in ``b`` with IoU >= min_iou, and vice versa."""
    assert len(a) == len(b), f"{len(a)} vs {len(b)} detections"
    if not len(a):
        return
    m = iou_matrix(a.xyxy, b.xyxy) * (a.class_id[:, None] == b.class_id[None, :])
    assert m.max(1).min() >= min_iou and m.max(0).min() >= min_iou, (
        f"lowest matched IoU {min(m.max(1).min(), m.max(0).min()):.4f}"
    )
