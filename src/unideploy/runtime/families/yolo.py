"""Ultralytics YOLO detectors (YOLOv8, YOLO11, YOLO26, YOLOv5u; RT-DETR's end-to-end export).

Two output layouts:
* raw head ``(B, 4 + nc, N)``: centre-x, centre-y, w, h in input pixels then class scores; needs NMS;
* end-to-end ``(B, K, 6)``: x1, y1, x2, y2, score, class in input pixels, sorted; no NMS.

Postprocessing reproduces ``ultralytics.utils.nms.non_max_suppression`` (best class per box,
strict ``> conf``, class offsets of 7680 px for class-aware NMS, at most 30000 boxes into NMS, then
``max_det``) and ``scale_boxes`` (undo the letterbox, clip). With ``multi_label`` (what Ultralytics' validators
pass; its ``predict`` does not) every (box, class) pair scoring over ``conf`` is a candidate, so one box may be
kept once per class.
"""

from __future__ import annotations

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

__all__ = ["YoloAdapter", "MAX_WH", "MAX_NMS", "end2end_rows", "yolo_candidates", "yolo_nms"]

MAX_WH = 7680
MAX_NMS = 30000
_STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64))


class YoloAdapter(Adapter):
    name = "yolo"
    task = "detect"
    layout = "(B, 4+nc, N) cx,cy,w,h + class scores, or end-to-end (B, K, 6) x1,y1,x2,y2,score,class"

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        if spec.task != "detect" or len(outputs) != 1 or len(outputs[0].shape) != 3:
            return False
        _, a, b = outputs[0].shape
        nc = spec.num_classes
        if spec.end2end:
            return True
        if b == 6:  # (B, K, 6) boxes, unless K counts the grid cells of a one-class YOLOv5 / YOLOX head
            return not any(a in (count_cells(spec.imgsz, s), 3 * count_cells(spec.imgsz, s)) for s in _STRIDE_SETS)
        return bool(nc) and a == 4 + nc

    def _is_end2end(self, out: np.ndarray) -> bool:
        if self.spec.end2end is not None:
            return bool(self.spec.end2end)
        return out.shape[-1] == 6 and out.shape[1] != 6

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Detections]:
        o = self.resolve_options(options)
        conf, iou, max_det, agnostic, classes = o.conf, o.iou, o.max_det, o.agnostic, o.classes
        out = outputs[0]
        if out.dtype != np.float32:
            out = out.astype(np.float32)
        e2e = self._is_end2end(out)
        results = []
        for pred, info in zip(out, infos):
            if e2e:
                keep = pred[:, 4] > conf
                if classes is not None:
                    keep &= np.isin(pred[:, 5].astype(np.int64), classes)
                sel = pred[keep][:max_det]
                boxes, scores, cls = sel[:, :4].copy(), sel[:, 4], sel[:, 5].astype(np.int64)
            else:
                boxes, scores, cls = self._nms(pred, conf, iou, max_det, agnostic, classes, o.multi_label)
            unletterbox_boxes(boxes, info)
            results.append(Detections(boxes, scores, cls, self.spec.names, info.orig_shape))
        return results

    def _nms(self, pred: np.ndarray, conf: float, iou: float, max_det: int, agnostic: bool,
             classes: Sequence[int] | None, multi_label: bool = False):
        boxes, scores, cls, _ = yolo_nms(pred, self.spec.num_classes or pred.shape[0] - 4, conf, iou, max_det,
                                         agnostic, classes, multi_label=multi_label)
        return boxes, scores, cls


def yolo_candidates(pred: np.ndarray, nc: int, conf: float, classes: Sequence[int] | None,
                    multi_label: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns of one raw head output ``(4 + nc + extra, N)`` that enter NMS: (indices, score, class).

    Single-label (Ultralytics' ``predict``): the best class of each box whose best score is ``> conf``.
    ``multi_label`` (Ultralytics' ``val``; a no-op for one class): every (box, class) pair with score ``> conf``,
    boxes in column order and each box's classes in ascending order, so a column index may repeat. Either way the
    asked ``classes`` are kept and at most 30000 enter NMS, best first when cut.
    """
    scores_all = pred[4 : 4 + nc]  # (nc, N)
    best = scores_all.max(0)
    cand = np.flatnonzero(best > conf)
    if multi_label and nc > 1 and cand.size:
        box_i, cls = np.nonzero(scores_all[:, cand].T > conf)  # row-major: box by box, classes ascending
        cand, scores = cand[box_i], scores_all[cls, cand[box_i]]
        if classes is not None:
            sel = np.isin(cls, classes)
            cand, scores, cls = cand[sel], scores[sel], cls[sel]
    else:
        if classes is not None and cand.size:
            cls_c = scores_all[:, cand].argmax(0)
            cand = cand[np.isin(cls_c, classes)]
        cls = scores_all[:, cand].argmax(0) if cand.size else np.zeros(0, np.int64)
        scores = best[cand]
    if not cand.size:
        return cand.astype(np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    if len(cand) > MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        cand, scores, cls = cand[top], scores[top], cls[top]
    return cand, scores, cls


def yolo_nms(pred: np.ndarray, nc: int, conf: float, iou: float, max_det: int, agnostic: bool,
             classes: Sequence[int] | None,
             multi_label: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NMS of one raw head output ``(4 + nc + extra, N)`` as Ultralytics': kept (xyxy, score, class, column index);
    the column index selects the kept boxes' extra channels (mask coefficients, keypoints), also for a box kept
    under several classes with ``multi_label`` (see :func:`yolo_candidates`)."""
    cand, scores, cls = yolo_candidates(pred, nc, conf, classes, multi_label)
    if not cand.size:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), cand
    boxes = cxcywh_to_xyxy(pred[:4, cand].T)
    offset = (cls.astype(np.float32) * (0 if agnostic else MAX_WH))[:, None]
    keep = nms(boxes + offset, scores, iou, max_keep=max_det)
    return boxes[keep], scores[keep], cls[keep].astype(np.int64), cand[keep]


def end2end_rows(pred: np.ndarray, conf: float, max_det: int, classes: Sequence[int] | None) -> np.ndarray:
    """Rows of one end-to-end output ``(K, 6 + extra)`` (box, score, class, extra) with ``score > conf``, of the
    asked classes, the first ``max_det`` (Ultralytics' end-to-end branch of ``non_max_suppression``)."""
    keep = pred[:, 4] > conf
    if classes is not None:
        keep &= np.isin(pred[:, 5].astype(np.int64), classes)
    return pred[keep][:max_det]
