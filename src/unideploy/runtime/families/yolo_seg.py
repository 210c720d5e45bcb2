"""Ultralytics YOLOv8 / YOLO11 instance segmentation (``-seg``).

Two outputs: detections ``(B, 4 + nc + nm, N)`` (centre-x, centre-y, w, h in input pixels, class scores, ``nm``
mask coefficients; or end-to-end ``(B, K, 6 + nm)`` x1, y1, x2, y2, score, class, coefficients) and mask prototypes
``(B, nm, H/4, W/4)``. Postprocessing is Ultralytics' ``SegmentationPredictor`` with ``retina_masks=True``: the
detector's NMS, boxes mapped back to the image, masks assembled at the image size
(:func:`unideploy.core.ops.masks.assemble_masks`, its ``process_mask_native``), and instances whose mask is empty
dropped. The ``retina_masks=False`` option gives its default path instead: masks at the model input size
(``process_mask``), brought onto the image as Ultralytics' plotting does
(:func:`unideploy.core.ops.masks.assemble_masks_input`); YOLOv5-seg follows the same option.

Original YOLOv5-seg (github.com/ultralytics/yolov5 v7.0, ``segment/``) is :class:`Yolov5SegAdapter`: detections
``(B, 3 x cells, 5 + nc + nm)`` (cx, cy, w, h in input pixels, objectness, class scores, both sigmoid, then the
mask coefficients) and the same prototypes. Boxes are YOLOv5's NMS (:class:`~unideploy.runtime.families.yolov5.
Yolov5Adapter`, the coefficient columns set aside as its ``non_max_suppression(nm=32)`` does) and masks are its
``--retina-masks`` path (``process_mask_native``, the same assembly as above).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unideploy.core.errors import ModelError
from unideploy.core.ops.letterbox import LetterboxInfo, unletterbox_boxes
from unideploy.core.ops.masks import assemble_masks, assemble_masks_input
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Masks, Segmentations
from unideploy.core.spec import ModelSpec
from unideploy.runtime.backends.base import TensorInfo
from unideploy.runtime.families.base import count_cells
from unideploy.runtime.families.yolo import YoloAdapter, end2end_rows, yolo_nms
from unideploy.runtime.families.yolov5 import ANCHORS_PER_CELL, STRIDE_SETS, Yolov5Adapter

__all__ = ["YoloSegAdapter", "Yolov5SegAdapter"]


def _split(outputs: Sequence[TensorInfo]) -> tuple[TensorInfo | None, TensorInfo | None]:
    preds = [o for o in outputs if len(o.shape) == 3]
    protos = [o for o in outputs if len(o.shape) == 4]
    return (preds[0] if len(preds) == 1 else None), (protos[0] if len(protos) == 1 else None)


def _v5_layout(spec: ModelSpec, pred: TensorInfo, nm: int) -> bool:
    """``pred`` is YOLOv5-seg's (B, 3 x cells, 5 + nc + nm): one row per anchor of strides 8-32 (or 8-64)."""
    n, c = pred.shape[1], pred.shape[2]
    if n is None or c is None or c <= 5 + nm or (spec.num_classes and c != 5 + spec.num_classes + nm):
        return False
    return any(n == ANCHORS_PER_CELL * count_cells(spec.imgsz, s) for s in STRIDE_SETS)


def _pred_and_protos(spec: ModelSpec, outputs: list[np.ndarray], model: str,
                     layout: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The detections and prototype outputs as float32 and the input/prototype ratio, or a one-line ModelError."""
    preds = [x for x in outputs if x.ndim == 3]
    protos = [x for x in outputs if x.ndim == 4]
    if len(preds) != 1 or len(protos) != 1:
        raise ModelError(f"{model} model: expected one {layout} output and one (B, nm, h, w) prototype "
                         f"output, got shapes {[tuple(x.shape) for x in outputs]}")
    proto = np.asarray(protos[0], np.float32)
    ratio = max(1, round(spec.imgsz[0] / proto.shape[2]))  # type: ignore[index]
    return np.asarray(preds[0], np.float32), proto, ratio


def _segmentations(spec: ModelSpec, protos: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                   cls: np.ndarray, info: LetterboxInfo, ratio: int, retina: bool = True) -> Segmentations:
    """Boxes (input pixels, mapped back here) + mask coefficients of one image -> its result; instances whose mask
    is empty are dropped, as YOLOv5 and Ultralytics do (N = 0 too).

    ``retina`` (``retina_masks``): masks assembled at the image size (``process_mask_native``); otherwise at the
    input size from the boxes in input pixels (``process_mask``, emptiness judged there as Ultralytics does) and
    mapped onto the image (:func:`~unideploy.core.ops.masks.assemble_masks_input`)."""
    if retina:
        unletterbox_boxes(boxes, info)
        masks = assemble_masks(protos, coeffs, boxes, info.orig_shape, ratio)
        keep = masks.any(axis=(1, 2))
    else:
        input_hw = spec.imgsz or (ratio * protos.shape[1], ratio * protos.shape[2])
        masks, keep = assemble_masks_input(protos, coeffs, boxes, input_hw, info.orig_shape)
        unletterbox_boxes(boxes, info)
    return Segmentations(boxes[keep], scores[keep], cls[keep], spec.names, info.orig_shape, masks=Masks(masks[keep]))


class YoloSegAdapter(YoloAdapter):
    """Ultralytics ``-seg`` models -> :class:`~unideploy.core.results.Segmentations` (masks at the image size).

    Example:
        >>> import unideploy
        >>> with unideploy.load("yolov8n-seg.onnx") as p:  # doctest: +SKIP
        ...     seg = p("bus.jpg"); seg.masks.data.shape
    """

    name = "yolo_seg"
    task = "segment"
    layout = ("(B, 4+nc+nm, N) boxes + class scores + mask coefficients (or end-to-end (B, K, 6+nm)) "
              "and prototypes (B, nm, H/4, W/4)")

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        if spec.task not in ("segment", "detect") or len(outputs) != 2:
            return False
        pred, proto = _split(outputs)
        if pred is None or proto is None or proto.shape[1] is None:
            return False
        nm, c, k = proto.shape[1], pred.shape[1], pred.shape[2]
        if _v5_layout(spec, pred, nm):
            return False  # YOLOv5-seg: Yolov5SegAdapter
        if spec.end2end or (k is not None and k == 6 + nm and c != k):
            return True
        return c is not None and c > 4 + nm and (not spec.num_classes or c == 4 + spec.num_classes + nm)

    def __init__(self, spec: ModelSpec, outputs: Sequence[TensorInfo] = (), keep=()) -> None:
        super().__init__(spec, outputs, keep)
        if outputs and _split(outputs)[1] is None:
            shapes = ", ".join(f"{o.name}{o.describe()}" for o in outputs)
            raise ModelError(f"segmentation model: expected detections (B, 4+nc+nm, N) and mask prototypes "
                             f"(B, nm, H/4, W/4), got {shapes}; export it with its prototype output (Ultralytics "
                             f"exports both) or pass --family yolo to read boxes only")

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Segmentations]:
        o = self.resolve_options(options)
        out, proto, ratio = _pred_and_protos(self.spec, outputs, "segmentation", "(B, C, N)")
        nm = proto.shape[1]
        e2e = self.spec.end2end if self.spec.end2end is not None else (out.shape[2] == 6 + nm and out.shape[1] != 6 + nm)
        results = []
        for pred, pr, info in zip(out, proto, infos):
            if e2e:
                sel = end2end_rows(pred, o.conf, o.max_det, o.classes)
                boxes, scores, cls, coeffs = sel[:, :4].copy(), sel[:, 4], sel[:, 5].astype(np.int64), sel[:, 6:]
            else:
                nc = self.spec.num_classes or pred.shape[0] - 4 - nm
                boxes, scores, cls, idx = yolo_nms(pred, nc, o.conf, o.iou, o.max_det, o.agnostic, o.classes,
                                                   o.multi_label)
                coeffs = pred[4 + nc: 4 + nc + nm, idx].T
            results.append(_segmentations(self.spec, pr, coeffs, boxes, scores, cls, info, ratio, o.retina_masks))
        return results


class Yolov5SegAdapter(Yolov5Adapter):
    """Original YOLOv5-seg (v7.0): ``(B, 3 x cells, 5 + nc + nm)`` + prototypes -> masks at the image size.

    Example:
        >>> import unideploy
        >>> with unideploy.load("yolov5s-seg.onnx", family="yolov5_seg") as p:  # doctest: +SKIP
        ...     seg = p("bus.jpg"); seg.masks.data.shape
    """

    name = "yolov5_seg"
    task = "segment"
    layout = "(B, 3 x cells of strides 8-32 or 8-64, 5+nc+nm) + prototypes (B, nm, H/4, W/4)"

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        if spec.task not in ("segment", "detect") or len(outputs) != 2:
            return False
        pred, proto = _split(outputs)
        return pred is not None and proto is not None and proto.shape[1] is not None and _v5_layout(
            spec, pred, proto.shape[1])

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Segmentations]:
        o = self.resolve_options(options)
        out, proto, ratio = _pred_and_protos(self.spec, outputs, "YOLOv5-seg", "(B, N, 5+nc+nm)")
        nm = proto.shape[1]
        results = []
        for pred, pr, info in zip(out, proto, infos):
            boxes, scores, cls, idx = self._nms(pred[:, :-nm], o.conf, o.iou, o.max_det, o.agnostic, o.classes,
                                                return_rows=True)
            results.append(_segmentations(self.spec, pr, pred[idx, -nm:], boxes, scores, cls, info, ratio,
                                          o.retina_masks))
        return results
