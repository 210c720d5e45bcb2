"""Boxes and keypoints scored as Ultralytics' ``PoseValidator`` scores them (``eval --metric ultralytics`` on pose).

In the letterboxed input (:func:`~unideploy.tools.evaluate.ultralytics_seg.validator_letterbox`): Ultralytics'
``kpt_iou`` — COCO's OKS with the object area taken as the ground-truth box's ``w * h * 0.53`` and only the
ground truth's labelled keypoints (visibility != 0) counted — between the ground truth and the raw head's keypoints;
then the matching and AP shared with the other Ultralytics metrics. Sigmas: the data set's ``kpt_oks_sigmas``, else
COCO's for 17 keypoints, else ``1 / K`` each (its rule).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.options import PostprocessOptions
from unideploy.tools.evaluate.ultralytics_seg import UltralyticsScorer, to_input

__all__ = ["POSE_AREA_FACTOR", "UltralyticsPoseScorer", "kpt_iou", "raw_pose"]

#: Ultralytics' OKS area: box w * h * 0.53
POSE_AREA_FACTOR = 0.53
_EPS = 1e-7


def kpt_iou(gt: np.ndarray, pred: np.ndarray, area: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """(N_gt, N_pred) OKS of (N, K, 3) ground-truth and (M, K, 2 or 3) predicted keypoints (Ultralytics'
    ``kpt_iou``; ``area`` per ground truth)."""
    g, p = np.asarray(gt, np.float32), np.asarray(pred, np.float32)
    s = np.asarray(sigma, np.float32)
    d = (g[:, None, :, 0] - p[None, :, :, 0]) ** 2 + (g[:, None, :, 1] - p[None, :, :, 1]) ** 2
    vis = (g[..., 2] != 0).astype(np.float32)
    e = d / ((2 * s) ** 2 * (np.asarray(area, np.float32)[:, None, None] + _EPS) * 2)
    return (np.exp(-e) * vis[:, None]).sum(-1) / (vis.sum(-1)[:, None] + _EPS)


class UltralyticsPoseScorer(UltralyticsScorer):
    """Boxes and keypoints of a pose model, as Ultralytics' PoseValidator (see the module docstring).

    Example:
        >>> s = UltralyticsPoseScorer({0: "a"}, [0.1])
        >>> kp = np.array([[[5, 5, 2.]]])
        >>> s.add_image(np.array([0]), np.array([[0, 0, 10, 10.]]), kp, LetterboxInfo((10, 10), (10, 10), (0, 0),
        ...             (1.0, 1.0)), np.array([[0, 0, 10, 10.]]), np.array([0.9]), np.array([0]), kp)
        >>> round(s.result()["pose"]["mAP50-95"], 3)
        0.995
    """

    def __init__(self, names: dict[int, str], sigmas: Sequence[float]) -> None:
        super().__init__(names, "pose", "PoseValidator")
        self.sigmas = np.asarray(sigmas, np.float32)

    def add_image(self, gt_cls: np.ndarray, gt_xyxy: np.ndarray, gt_kpts: np.ndarray, info: LetterboxInfo,
                  boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray, kpts: np.ndarray) -> None:
        """One image: ground truth in image pixels ((N, K, 3) keypoints with visibility), the NMS output in input
        pixels (score order) with its (M, K, 2 or 3) keypoints."""
        gb = to_input(np.asarray(gt_xyxy, np.float64).reshape(-1, 4), info).reshape(-1, 4)
        g = np.array(gt_kpts, np.float64).reshape(len(gb), len(self.sigmas), 3)
        g[..., :2] = to_input(g[..., :2].reshape(-1, 2), info).reshape(g.shape[0], g.shape[1], 2)
        area = (gb[:, 2] - gb[:, 0]) * (gb[:, 3] - gb[:, 1]) * POSE_AREA_FACTOR
        self.add(gt_cls, gb, boxes, scores, cls, lambda: kpt_iou(g, kpts, area, self.sigmas))


def raw_pose(adapter: Any, outputs: list[np.ndarray], options: PostprocessOptions) -> tuple[np.ndarray, ...]:
    """NMS of one image's raw pose output as the validator has it: (boxes in input pixels, scores, classes,
    (N, K, D) keypoints in input pixels). ``adapter`` is the model's YOLO pose adapter."""
    from unideploy.runtime.families.yolo import yolo_nms

    o = adapter.resolve_options(options)
    pred = np.asarray(outputs[0][0], np.float32)
    k, d = adapter.kpt_shape
    nc = pred.shape[0] - 4 - k * d
    boxes, scores, cls, idx = yolo_nms(pred, nc, o.conf, o.iou, o.max_det, o.agnostic, o.classes, o.multi_label)
    return boxes, scores, cls, pred[4 + nc:, idx].T.reshape(-1, k, d)
