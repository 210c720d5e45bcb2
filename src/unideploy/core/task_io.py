"""What the sinks write for segmentation, pose and oriented boxes: COCO fields, YOLO label lines and drawings.

:mod:`unideploy.core.sinks` calls these for the task result types (plain detections keep their own writers):

* COCO results: ``"segmentation": {"size": [h, w], "counts": RLE}`` (pycocotools' compressed RLE),
  ``"keypoints": [x1, y1, v1, ...]`` (v = keypoint confidence), ``"rbox": [cx, cy, w, h, theta]`` (radians) and
  ``"poly": [x1, y1, ..., x4, y4]`` with ``"bbox"`` the polygon's bounds;
* YOLO ``.txt`` lines in Ultralytics' formats, normalised to the image size: ``class x1 y1 x2 y2 ...`` (mask
  outline) for segmentation, ``class cx cy w h kx ky kv ...`` for pose, ``class x1 y1 ... x4 y4`` for OBB,
  each followed by the score;
* drawings: translucent masks, keypoints (with the COCO skeleton for 17 keypoints) and rotated boxes.
"""

from __future__ import annotations

import cv2
import numpy as np

from unideploy.core.results import Detections, OrientedDetections, Poses, Segmentations

__all__ = ["COCO_SKELETON", "draw_task", "task_coco_fields", "task_txt_lines"]

#: COCO person skeleton (1-based keypoint pairs)
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]


def task_coco_fields(res: Detections) -> list[dict]:
    """The task-specific COCO fields of each instance of ``res`` (empty dicts for plain detections)."""
    if isinstance(res, Segmentations):
        return [{"segmentation": r} for r in res.masks.rle()]  # type: ignore[union-attr]
    if isinstance(res, Poses):
        return [{"keypoints": [round(float(v), 3) for v in k.ravel()]} for k in res.keypoints.data]  # type: ignore[union-attr]
    if isinstance(res, OrientedDetections):
        return [{"rbox": [round(float(v), 5) for v in r], "poly": [round(float(v), 3) for v in c.ravel()]}
                for r, c in zip(res.obb.xywhr, res.obb.corners)]  # type: ignore[union-attr]
    return [{} for _ in range(len(res))]


def _fmt(values: np.ndarray) -> str:
    return " ".join(f"{float(v):.6f}" for v in values)


def task_txt_lines(res: Detections, with_conf: bool = True) -> list[str] | None:
    """Ultralytics-format label lines of a task result (None for plain detections, which keep ``class cx cy w h``).

    A segmentation whose mask outline has fewer than 3 points is left out, as Ultralytics does.
    """
    if not isinstance(res, (Segmentations, Poses, OrientedDetections)):
        return None
    if res.image_shape is None:
        raise ValueError("image_shape is needed to normalise YOLO labels")
    h, w = res.image_shape
    scale = np.array([w, h], np.float32)
    lines = []
    if isinstance(res, Segmentations):
        for poly, s, c in zip(res.masks.polygons(), res.confidence, res.class_id):  # type: ignore[union-attr]
            if len(poly) >= 3:
                lines.append(f"{int(c)} {_fmt((poly / scale).ravel())}" + (f" {s:.5f}" if with_conf else ""))
    elif isinstance(res, Poses):
        for (x1, y1, x2, y2), k, s, c in zip(res.xyxy, res.keypoints.data, res.confidence, res.class_id):  # type: ignore[union-attr]
            box = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
            kp = np.concatenate([k[:, :2] / scale, k[:, 2:]], 1).ravel()
            lines.append(f"{int(c)} {_fmt(np.array(box))} {_fmt(kp)}" + (f" {s:.5f}" if with_conf else ""))
    else:
        for corners, s, c in zip(res.obb.corners, res.confidence, res.class_id):  # type: ignore[union-attr]
            lines.append(f"{int(c)} {_fmt((corners / scale).ravel())}" + (f" {s:.5f}" if with_conf else ""))
    return lines


def draw_task(img: np.ndarray, res: Detections, colour) -> np.ndarray:
    """Draw the task part of ``res`` on ``img`` in place (masks, keypoints, rotated boxes); returns ``img``.

    ``colour(class_id)`` gives a BGR colour.
    """
    lw = max(1, round(sum(img.shape[:2]) / 2 * 0.003))
    if isinstance(res, Segmentations) and len(res):
        data = res.masks.data  # type: ignore[union-attr]
        if data.shape[1:] == img.shape[:2]:
            overlay = img.astype(np.float32)
            for m, c in zip(data, res.class_id):
                overlay[m] = overlay[m] * 0.5 + np.array(colour(int(c)), np.float32) * 0.5
            img[:] = overlay.astype(np.uint8)
    elif isinstance(res, Poses):
        kp = res.keypoints.data  # type: ignore[union-attr]
        r = max(2, lw + 1)
        for k in kp:
            if k.shape[0] == 17:
                for a, b in COCO_SKELETON:
                    pa, pb = k[a - 1], k[b - 1]
                    if pa[2] >= 0.5 and pb[2] >= 0.5:
                        cv2.line(img, (int(pa[0]), int(pa[1])), (int(pb[0]), int(pb[1])), (255, 128, 0), lw, cv2.LINE_AA)
            for j, (x, y, v) in enumerate(k):
                if v >= 0.5:
                    cv2.circle(img, (int(x), int(y)), r, colour(j), -1, cv2.LINE_AA)
    elif isinstance(res, OrientedDetections):
        for corners, c in zip(res.obb.corners, res.class_id):  # type: ignore[union-attr]
            cv2.polylines(img, [np.round(corners).astype(np.int32)], True, colour(int(c)), lw, cv2.LINE_AA)
    return img
