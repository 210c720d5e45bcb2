"""Ultralytics YOLOv8 / YOLO11 oriented boxes (``-obb``).

One output ``(B, 4 + nc + 1, N)``: centre-x, centre-y, w, h in input pixels, class scores, then the rotation in
radians; or end-to-end ``(B, K, 7)`` x, y, w, h, score, class, rotation. Postprocessing is Ultralytics'
``OBBPredictor``: best class per box over ``conf`` (every class over it with ``multi_label``, as its validator), rotated NMS with ProbIoU (its fast NMS, classes offset by
7680 px), then centres and sizes mapped back through the letterbox (``scale_boxes(xywh=True)``, not clipped).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unideploy.core.ops.keypoints import unletterbox_xywhr
from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.ops.rotated import rotated_nms
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import OrientedDetections
from unideploy.core.spec import ModelSpec
from unideploy.runtime.backends.base import TensorInfo
from unideploy.runtime.families.yolo import MAX_WH, YoloAdapter, end2end_rows, yolo_candidates

__all__ = ["YoloObbAdapter"]


class YoloObbAdapter(YoloAdapter):
    """Ultralytics ``-obb`` models -> :class:`~unideploy.core.results.OrientedDetections`.

    Example:
        >>> import unideploy
        >>> with unideploy.load("yolov8n-obb.onnx") as p:  # doctest: +SKIP
        ...     obb = p("aerial.jpg"); obb.obb.xywhr.shape
    """

    name = "yolo_obb"
    task = "obb"
    layout = "(B, 4+nc+1, N) cx,cy,w,h + class scores + angle (radians), or end-to-end (B, K, 7)"

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        return spec.task == "obb" and len(outputs) == 1 and len(outputs[0].shape) == 3

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[OrientedDetections]:
        o = self.resolve_options(options)
        out = np.asarray(outputs[0], np.float32)
        e2e = self.spec.end2end if self.spec.end2end is not None else (out.shape[2] == 7 and out.shape[1] != 7)
        results = []
        for pred, info in zip(out, infos):
            if e2e:
                sel = end2end_rows(pred, o.conf, o.max_det, o.classes)
                rb = np.concatenate([sel[:, :4], sel[:, 6:7]], 1)
                scores, cls = sel[:, 4], sel[:, 5].astype(np.int64)
            else:
                rb, scores, cls = self._nms(pred, o.conf, o.iou, o.max_det, o.agnostic, o.classes, o.multi_label)
            unletterbox_xywhr(rb, info)
            results.append(OrientedDetections.from_xywhr(rb, scores, cls, self.spec.names, info.orig_shape))
        return results

    def _nms(self, pred: np.ndarray, conf: float, iou: float, max_det: int, agnostic: bool,
             classes: Sequence[int] | None, multi_label: bool = False):
        nc = pred.shape[0] - 5
        cand, scores, cls = yolo_candidates(pred, nc, conf, classes, multi_label)
        rb = np.concatenate([pred[:4, cand].T, pred[-1:, cand].T], 1)
        offset = cls.astype(np.float32)[:, None] * np.float32(0 if agnostic else MAX_WH)
        shifted = np.concatenate([rb[:, :2] + offset, rb[:, 2:]], 1)
        keep = rotated_nms(shifted, scores, iou, max_keep=max_det)
        return rb[keep], scores[keep], cls[keep].astype(np.int64)
