"""Helpers for the bench / pipeline tests: a tiny "probe" detector whose result names its input.

The probe model (ONNX, built with onnx.helper) takes (N, 3, 32, 32) float images and returns one box per
image in the Ultralytics raw-head layout (N, 4 + 1, 1): a fixed box (centre 16,16, size 16x16 in input
pixels) whose class score is the mean pixel value of the image. Probe images are uniform squares (no
letterbox padding), so an image of grey level ``v`` gives exactly one detection with confidence ``v/255``
and ``image_shape`` equal to its own size: every result can be traced back to its image.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

PROBE_BOX_XYXY_INPUT = (8.0, 8.0, 24.0, 24.0)  # in the 32x32 input


def build_probe_model(folder: Path, *, batch: int | None = None, name: str = "probe") -> Path:
    """Write ``probe.onnx`` (dynamic batch unless ``batch``) and its sidecar spec ``probe.json``."""
    import onnx
    from onnx import TensorProto, helper

    n = batch or "N"
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [n, 3, 32, 32])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [n, 5, 1])
    box = helper.make_tensor("box", TensorProto.FLOAT, [1, 4, 1], [16.0, 16.0, 16.0, 16.0])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [0, 1, 1])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=1),  # (N,1,1,1)
        helper.make_node("Reshape", ["m", "shape"], ["score"]),  # (N,1,1)
        helper.make_node("Mul", ["score", "zero"], ["z"]),
        helper.make_node("Add", ["z", "box"], ["boxes"]),  # (N,4,1)
        helper.make_node("Concat", ["boxes", "score"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(nodes, "probe", [x], [y], [box, zero, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    (folder / f"{name}.json").write_text(json.dumps({"task": "detect", "names": {"0": "probe"}, "imgsz": [32, 32]}))
    return path


def probe_images(folder: Path, n: int = 12) -> list[tuple[Path, int, int]]:
    """``n`` uniform square PNGs of distinct grey levels and sizes: [(path, grey level, side)]."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        v, side = 70 + 13 * i, 32 + 8 * i
        p = folder / f"p{i:03d}.png"
        cv2.imwrite(str(p), np.full((side, side, 3), v, np.uint8))
        out.append((p, v, side))
    return out


def probe_coco(images: list[tuple[Path, int, int]], path: Path) -> Path:
    """A COCO instances JSON whose one box per image is exactly where the probe model puts it (mAP = 1)."""
    x0, y0, x1, y1 = PROBE_BOX_XYXY_INPUT
    ims, anns = [], []
    for k, (p, _, side) in enumerate(images, 1):
        s = side / 32
        ims.append({"id": k, "file_name": p.name, "width": side, "height": side})
        anns.append({"id": k, "image_id": k, "category_id": 1, "bbox": [x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s],
                     "area": (x1 - x0) * (y1 - y0) * s * s, "iscrowd": 0})
    path.write_text(json.dumps({"images": ims, "annotations": anns, "categories": [{"id": 1, "name": "probe"}]}))
    return path
