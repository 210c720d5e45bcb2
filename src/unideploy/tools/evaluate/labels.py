"""Ground truth of the tasks beyond boxes: YOLO label lines and COCO annotations for masks, keypoints and rotated boxes.

One YOLO ``.txt`` line per object, coordinates normalised to the image size (Ultralytics' formats):

* detection: ``class cx cy w h``; a polygon line (below) in a detection set counts as its bounds, as Ultralytics
  reads segmentation labels for a detector;
* segmentation: ``class x1 y1 x2 y2 ...`` (one polygon, at least 3 points); its box is the polygon's bounds;
* pose: ``class cx cy w h kx ky [kv] ...`` with ``kpt_shape: [K, 2 or 3]`` in the data.yaml; a keypoint without a
  visibility column is visible unless a coordinate is negative (Ultralytics' rule);
* oriented boxes: ``class x1 y1 x2 y2 x3 y3 x4 y4`` (the four corners); its box is the corners' bounds.

COCO JSON ground truth carries the same things as COCO fields: ``segmentation`` (polygons or RLE), ``keypoints`` +
``num_keypoints``, and for oriented boxes ``poly`` (8 numbers, the corners) as unideploy writes its OBB results, or a
4-corner ``segmentation`` polygon, or ``rbox`` ``[cx, cy, w, h, radians]`` (what the demo generator writes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TASKS", "LabelError", "parse_line", "polygon_area", "coco_extras", "annotation_extras"]

#: tasks whose ground truth these helpers read (the model's task names)
TASKS = ("detect", "segment", "pose", "obb")

#: Ultralytics' pose-val box area factor (from xtcocotools): OKS area = box w * h * 0.53 for YOLO pose labels
POSE_AREA_FACTOR = 0.53


class LabelError(ValueError):
    """A label line that cannot be read (the message says what was expected)."""


def polygon_area(flat: list[float] | np.ndarray) -> float:
    """Area of one polygon ``[x1, y1, x2, y2, ...]`` (shoelace formula).

    Example:
        >>> polygon_area([0, 0, 4, 0, 4, 3, 0, 3])
        12.0
    """
    p = np.asarray(flat, np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def parse_line(vals: list[str], task: str, w: int, h: int,
               kpt_shape: tuple[int, int] | None = None) -> tuple[int, list[float], Any]:
    """``(class, xyxy in pixels, extra)`` of one YOLO label line of ``task`` on a ``w`` x ``h`` image.

    ``extra`` is the (K, 2) polygon for segmentation, the (K, 3) keypoints (x, y, visibility) for pose, the (4, 2)
    corners for OBB (all in pixels), None for detection.

    Raises:
        LabelError: the line has the wrong number of values for ``task`` (the message names the expected layout).

    Example:
        >>> c, box, poly = parse_line("1 0.1 0.1 0.5 0.1 0.5 0.5".split(), "segment", 100, 200)
        >>> c, [round(v, 3) for v in box], poly.shape
        (1, [10.0, 20.0, 50.0, 100.0], (3, 2))
    """
    try:
        c = int(float(vals[0]))
        nums = np.array([float(v) for v in vals[1:]], np.float64)
    except (ValueError, IndexError):
        raise LabelError(_expected(task, kpt_shape)) from None
    scale = np.array([w, h], np.float64)
    n = len(nums)
    if task == "pose":
        k, d = kpt_shape or (0, 0)
        if n != 4 + k * d or not k:
            raise LabelError(_expected(task, kpt_shape))
        cx, cy, bw, bh = nums[:4]
        kp = nums[4:].reshape(k, d)
        xy = kp[:, :2] * scale
        vis = kp[:, 2] if d == 3 else np.where((kp[:, 0] < 0) | (kp[:, 1] < 0), 0.0, 2.0)
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        return c, box, np.concatenate([xy, vis[:, None]], 1)
    if task == "obb":
        if n != 8:
            raise LabelError(_expected(task, kpt_shape))
        corners = nums.reshape(4, 2) * scale
        return c, [float(v) for v in (*corners.min(0), *corners.max(0))], corners
    if task == "detect" and (n in (4, 5) or (kpt_shape and n == 4 + kpt_shape[0] * kpt_shape[1])):
        # a box, a box with a trailing score, or a pose line (its box, as Ultralytics reads pose labels for a detector)
        cx, cy, bw, bh = nums[:4]
        return c, [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], None
    if n >= 6 and n % 2 == 0:  # a polygon: its bounds for a detector, the polygon itself for segmentation
        poly = nums.reshape(-1, 2) * scale
        return c, [float(v) for v in (*poly.min(0), *poly.max(0))], (poly if task == "segment" else None)
    raise LabelError(_expected(task, kpt_shape))


def _expected(task: str, kpt_shape: tuple[int, int] | None) -> str:
    if task == "pose":
        k, d = kpt_shape or ("K", "D")
        return f"expected 'class cx cy w h' + {k}x{d} keypoint values (kpt_shape [{k}, {d}])"
    if task == "obb":
        return "expected 'class x1 y1 x2 y2 x3 y3 x4 y4' (4 corners)"
    if task == "segment":
        return "expected 'class x1 y1 x2 y2 x3 y3 ...' (a polygon of at least 3 points)"
    return "expected 'class cx cy w h'"


def annotation_extras(a: dict, task: str, kpt_shape: tuple[int, int] | None) -> Any:
    """The task part of one COCO ground-truth annotation: segmentation (as given), (K, 3) keypoints, (4, 2) corners.

    Raises:
        LabelError: the annotation lacks the task's field or it has the wrong size.
    """
    if task == "segment":
        seg = a.get("segmentation")
        if not seg:
            raise LabelError("expected a 'segmentation' (polygons or RLE) in each annotation")
        return seg
    if task == "pose":
        kp = np.asarray(a.get("keypoints") or [], np.float64)
        if not kp.size or kp.size % 3 or (kpt_shape and kp.size != kpt_shape[0] * 3):
            want = f"{kpt_shape[0]} x 3" if kpt_shape else "K x 3"
            raise LabelError(f"expected 'keypoints' of {want} values (x, y, v), got {kp.size}")
        return kp.reshape(-1, 3)
    if task == "obb":  # 'poly' (as unideploy writes), else a 4-corner 'segmentation', else 'rbox' [cx, cy, w, h, rad]
        seg = a.get("segmentation")
        poly = np.asarray(a.get("poly") or (seg[0] if isinstance(seg, list) and len(seg) == 1 else []), np.float64)
        if poly.size != 8 and a.get("rbox") is not None and len(a["rbox"]) == 5:
            from unideploy.core.ops.rotated import xywhr_to_corners

            poly = xywhr_to_corners(np.asarray(a["rbox"], np.float32)[None])[0].astype(np.float64)
        if poly.size != 8:
            raise LabelError(f"expected 'poly' (or a 4-corner 'segmentation', or 'rbox' [cx, cy, w, h, radians]) "
                             f"with the 4 corners x1 y1 ... x4 y4, got {poly.size} values")
        return poly.reshape(4, 2)
    return None


def coco_extras(task: str, extra: Any, bbox_area: float, area: float | None) -> dict:
    """COCO fields of one ground-truth instance of ``task`` (``area`` as given in a COCO JSON, or None).

    Segmentation: ``segmentation`` (pixel polygons or RLE) and the polygon area; pose: ``keypoints``,
    ``num_keypoints`` and the area OKS uses (the given one, else Ultralytics' box area x 0.53); OBB: ``poly``.
    """
    if task == "segment":
        seg = extra if isinstance(extra, (list, dict)) else [np.asarray(extra, np.float64).ravel().tolist()]
        if area is None:
            area = sum(polygon_area(p) for p in seg) if isinstance(seg, list) else bbox_area
        return {"segmentation": seg, "area": float(area)}
    if task == "pose":
        kp = np.asarray(extra, np.float64)
        return {"keypoints": kp.ravel().tolist(), "num_keypoints": int((kp[:, 2] > 0).sum()),
                "area": float(area if area is not None else bbox_area * POSE_AREA_FACTOR)}
    if task == "obb":
        return {"poly": np.asarray(extra, np.float64).ravel().tolist(), "area": float(area if area is not None else bbox_area)}
    return {"area": float(area if area is not None else bbox_area)}
