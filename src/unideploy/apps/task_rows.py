"""The task part of a result (masks, keypoints, rotated boxes) as one JSON string, and back, exactly.

Ray Data rows (:mod:`unideploy.apps.distributed`) carry boxes, scores and classes as typed columns; a
segmentation, pose or OBB model's extra geometry travels in one more string column, ``task``, so that the
rows rebuild the very result the actor computed: masks as COCO compressed RLE (lossless for bool masks),
keypoints and ``xywhr`` as float32 values (a float32 survives the trip through a JSON float unchanged).

Example:
    >>> import numpy as np
    >>> from unideploy.core.results import Detections, OrientedDetections
    >>> o = OrientedDetections.from_xywhr(np.array([[10, 10, 4, 2, 0.5]]), [0.9], [1], image_shape=(20, 20))
    >>> plain = Detections(o.xyxy, o.confidence, o.class_id, {}, (20, 20))
    >>> bool((decode_task(plain, encode_task(o)).obb.xywhr == o.obb.xywhr).all())
    True
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from unideploy.core.results import (Detections, Keypoints, Masks, OrientedBoxes, OrientedDetections, Poses,
                                    Segmentations)

__all__ = ["encode_task", "decode_task"]


def encode_task(det: Any) -> str | None:
    """The task fields of ``det`` as a JSON string; None for plain detections (and anything else)."""
    if isinstance(det, Segmentations) and det.masks is not None:
        return json.dumps({"task": "segment", "masks": det.masks.rle(), "shape": list(det.masks.data.shape[1:])})
    if isinstance(det, Poses) and det.keypoints is not None:
        return json.dumps({"task": "pose", "keypoints": det.keypoints.data.tolist(),
                           "k": list(det.keypoints.data.shape[1:])})
    if isinstance(det, OrientedDetections) and det.obb is not None:
        return json.dumps({"task": "obb", "xywhr": det.obb.xywhr.tolist()})
    return None


def decode_task(det: Detections, payload: str | None) -> Detections:
    """``det`` (boxes, scores, classes) with the task fields of ``payload`` (from :func:`encode_task`) put back."""
    if not payload:
        return det
    d = json.loads(payload)
    base = dict(xyxy=det.xyxy, confidence=det.confidence, class_id=det.class_id, names=det.names,
                image_shape=det.image_shape)
    if d["task"] == "segment":
        from unideploy.core.ops.masks import decode_rle

        data = (np.stack([decode_rle(r) for r in d["masks"]]) if d["masks"]
                else np.zeros((0, *d["shape"]), bool))
        return Segmentations(**base, masks=Masks(data))
    if d["task"] == "pose":
        kp = np.asarray(d["keypoints"], np.float32).reshape(-1, *d["k"])
        return Poses(**base, keypoints=Keypoints(kp))
    if d["task"] == "obb":
        return OrientedDetections(**base, obb=OrientedBoxes(np.asarray(d["xywhr"], np.float32).reshape(-1, 5)))
    raise ValueError(f"task payload: expected task segment, pose or obb, got {d['task']!r}")
