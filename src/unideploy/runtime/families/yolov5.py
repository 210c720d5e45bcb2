"""Original YOLOv5 (anchor-based, github.com/ultralytics/yolov5 and the ``yolov5`` PyPI package).

Output layout ``(B, N, 5 + nc)``, decoded in the graph by YOLOv5's ``Detect`` in export mode:
centre-x, centre-y, w, h in input pixels, objectness, then per-class scores (both already sigmoid).
``N = 3 * sum(ceil(H/s) * ceil(W/s))`` over strides 8/16/32 (P5) or 8/16/32/64 (P6): three anchors per cell.

Preprocessing is the Ultralytics letterbox (centred, pad 114, RGB, /255). Postprocessing reproduces
``yolov5.utils.general.non_max_suppression`` with ``multi_label=False`` (candidates ``obj > conf``, score
``obj * cls``, best class per box, ``score > conf``, at most 30000 boxes sorted by score into NMS, class offsets
of 7680 px, then ``max_det``) and ``scale_boxes`` (one gain ``r = min(H/h0, W/w0)`` and the unrounded
padding ``(W - w0 * r) / 2``, then clip). Ultralytics' anchor-free "YOLOv5u" models are the ``yolo`` family.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from unideploy.runtime.backends.base import TensorInfo
from unideploy.core.ops.boxes import cxcywh_to_xyxy
from unideploy.core.ops.letterbox import LetterboxInfo, unletterbox_boxes
from unideploy.core.ops.nms import nms
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Detections
from unideploy.core.spec import ModelSpec
from unideploy.runtime.families.base import Adapter, count_cells

__all__ = ["Yolov5Adapter", "STRIDE_SETS", "ANCHORS_PER_CELL"]

MAX_WH = 7680
MAX_NMS = 30000
ANCHORS_PER_CELL = 3
STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64))


def _dense_layout(spec: ModelSpec, outputs: Sequence[TensorInfo], per_cell: int,
                  stride_sets: Sequence[Sequence[int]] = STRIDE_SETS) -> bool:
    """One (B, N, 5 + nc) output whose N is ``per_cell`` boxes per grid cell at one of ``stride_sets``."""
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        return False
    _, n, c = outputs[0].shape
    if n is None or c is None or c < 6:
        return False
    if spec.num_classes and c != 5 + spec.num_classes:
        return False
    return any(n == per_cell * count_cells(spec.imgsz, s) for s in stride_sets)


class Yolov5Adapter(Adapter):
    """YOLOv5 (anchor-based): ``(B, N, 5 + nc)`` outputs, score = objectness x class score.

    Example:
        >>> import unideploy
        >>> p = unideploy.load("yolov5s.onnx", family="yolov5", iou=0.45)  # doctest: +SKIP
        >>> dets = p("bus.jpg")  # doctest: +SKIP
    """

    name = "yolov5"
    task = "detect"
    #: yolov5's detect.py / val.py NMS threshold
    postprocess_defaults = {"conf": 0.25, "iou": 0.45, "max_det": 300}
    layout = "(B, 3 x cells of strides 8-32 or 8-64, 5+nc) cx,cy,w,h,objectness + class scores"

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        return spec.task == "detect" and _dense_layout(spec, outputs, ANCHORS_PER_CELL)

    def resize(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        out, info = super().resize(img)
        if self.spec.resize == "letterbox":  # map boxes back as yolov5's scale_boxes does
            (h0, w0), (h, w) = info.orig_shape, self.spec.imgsz  # type: ignore[misc]
            r = min(h / h0, w / w0)
            info = replace(info, pad=((w - w0 * r) / 2, (h - h0 * r) / 2), gain=(r, r))  # type: ignore[arg-type]
        return out, info

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Detections]:
        o = self.resolve_options(options)
        out = np.asarray(outputs[0], np.float32)
        results = []
        for pred, info in zip(out, infos):
            boxes, scores, cls = self._nms(pred, o.conf, o.iou, o.max_det, o.agnostic, o.classes)
            unletterbox_boxes(boxes, info)
            results.append(Detections(boxes, scores, cls, self.spec.names, info.orig_shape))
        return results

    def _nms(self, pred: np.ndarray, conf: float, iou: float, max_det: int, agnostic: bool,
             classes: Sequence[int] | None, return_rows: bool = False) -> tuple[np.ndarray, ...]:
        """(boxes, scores, classes) kept, and with ``return_rows`` their row indices into ``pred`` (YOLOv5-seg)."""
        rows = np.flatnonzero(pred[:, 4] > conf)  # objectness candidates
        x = pred[rows]
        cls_scores = x[:, 5:] * x[:, 4:5]
        cls = cls_scores.argmax(1) if len(x) else np.zeros(0, np.int64)
        scores = cls_scores[np.arange(len(x)), cls] if len(x) else np.zeros(0, np.float32)
        keep = scores > conf
        if classes is not None:
            keep &= np.isin(cls, classes)
        x, scores, cls, rows = x[keep], scores[keep], cls[keep], rows[keep]
        if not len(x):
            empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
            return (*empty, np.zeros(0, np.int64)) if return_rows else empty
        order = np.argsort(-scores, kind="stable")[:MAX_NMS]
        boxes, scores, cls, rows = cxcywh_to_xyxy(x[order, :4]), scores[order], cls[order], rows[order]
        offset = (cls.astype(np.float32) * (0 if agnostic else MAX_WH))[:, None]
        k = nms(boxes + offset, scores, iou, max_keep=max_det)
        kept = (boxes[k], scores[k], cls[k].astype(np.int64))
        return (*kept, rows[k]) if return_rows else kept
