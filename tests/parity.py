"""Matching helpers for parity tests: one-to-one box matching with tolerances."""

from __future__ import annotations

import numpy as np

from unideploy.core.ops.boxes import box_iou


def assert_same_detections(ours, xyxy, conf, cls, *, px: float = 1.0, score_tol: float = 1e-3, where: str = "") -> None:
    """Every box matched one-to-one (same class, corners within ``px``, score within ``score_tol``)."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    conf = np.asarray(conf, np.float32).reshape(-1)
    cls = np.asarray(cls).astype(np.int64).reshape(-1)
    assert len(ours) == len(xyxy), f"{where}: {len(ours)} boxes vs reference {len(xyxy)}"
    if not len(xyxy):
        return
    iou = box_iou(ours.xyxy, xyxy)
    same_class = ours.class_id[:, None] == cls[None, :]
    used = np.zeros(len(xyxy), bool)
    for i in np.argsort(-ours.confidence, kind="stable"):
        cand = np.where(~used)[0]
        diff = np.abs(ours.xyxy[i][None] - xyxy[cand]).max(1)
        ok = cand[(diff <= px) & same_class[i, cand] & (np.abs(conf[cand] - ours.confidence[i]) <= score_tol)]
        assert ok.size, (f"{where}: box {ours.xyxy[i]} class {ours.class_id[i]} score {ours.confidence[i]:.5f} "
                         f"has no reference match within {px}px / {score_tol}")
        j = ok[np.argmax(iou[i, ok])]  # zero-area (clipped) boxes have IoU 0: corners decide
        used[j] = True
