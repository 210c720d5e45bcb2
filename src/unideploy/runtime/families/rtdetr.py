"""RT-DETR detectors: no NMS, boxes are normalised centre-x, centre-y, w, h of the (stretched) input.

Three export layouts:

* ``"topk"`` — Ultralytics >= 8.4 (``RTDETRDecoder.postprocess`` in the graph): one ``(B, K, 6)`` output of
  cx, cy, w, h, score, class, already the top K over query x class and sorted by score;
* ``"scores"`` — older Ultralytics: one ``(B, Q, 4 + nc)`` output of cx, cy, w, h and per-class sigmoid scores;
  each query keeps its best class (``RTDETRPredictor.postprocess`` of Ultralytics 8.0-8.3);
* ``"split"`` — PaddleDetection (``exclude_post_process=True``) and lyuwenyu/RT-DETR exports: two outputs,
  boxes ``(B, Q, 4)`` and class logits ``(B, Q, nc)``; sigmoid, then the top ``num_top_queries`` (300) over all
  query x class pairs (``RTDETRPostProcessor`` / ``DETRPostProcess``), each pair its own detection.

Then ``score > conf``, ``classes``, ``max_det``; boxes are scaled to input pixels and mapped back to the image
(for the default stretch resize: times the image width and height, as the references do) and clipped to it
(the references leave boxes that stick out of the image unclipped).

Preprocessing: stretch to the input size (Ultralytics' ``scale_fill``), RGB, /255, no mean/std.
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

import numpy as np

from unideploy.runtime.backends.base import TensorInfo
from unideploy.core.errors import ModelError
from unideploy.core.ops.boxes import cxcywh_to_xyxy
from unideploy.core.ops.letterbox import LetterboxInfo, unletterbox_boxes
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Detections
from unideploy.core.spec import ModelSpec
from unideploy.runtime.families.base import Adapter, count_cells
from unideploy.runtime.families.yolov5 import STRIDE_SETS

NUM_TOP_QUERIES = 300
LAYOUTS = ("topk", "scores", "split")


def _box_output(outputs: Sequence[TensorInfo]) -> int | None:
    """Index of the boxes output among two (last dim 4; by name when both have 4 values)."""
    fours = [i for i, o in enumerate(outputs) if o.shape[-1] == 4]
    if len(fours) == 1:
        return fours[0]
    named = [i for i, o in enumerate(outputs) if "box" in o.name.lower()]
    return named[0] if len(named) == 1 else (0 if len(fours) == 2 else None)


class RtdetrAdapter(Adapter):
    """RT-DETR (Ultralytics, PaddleDetection, lyuwenyu/RT-DETR): NMS-free query outputs.

    Example:
        >>> import unideploy
        >>> p = unideploy.load("rtdetr-l.onnx")  # doctest: +SKIP
        >>> dets = p("bus.jpg")  # doctest: +SKIP
    """

    name = "rtdetr"
    task = "detect"
    layout = "(B, Q, 4+nc) or boxes (B, Q, 4) + logits (B, Q, nc); Ultralytics (B, K, 6) by its metadata"

    def __init__(self, spec: ModelSpec, outputs: Sequence[TensorInfo] = (), keep: Collection[str] = ()) -> None:
        super().__init__(spec, outputs, keep)
        self.layout: str | None = self.spec.extra.get("rtdetr_layout")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ModelError(f"spec extra 'rtdetr_layout' must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        self._boxes_index = _box_output(self.outputs) if len(self.outputs) == 2 else None

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        if spec.task != "detect":
            return False
        if len(outputs) == 2:
            a, b = (o.shape for o in outputs)
            i = _box_output(outputs)
            return (len(a) == len(b) == 3 and i is not None and a[:2] == b[:2] and a[1] is not None
                    and (not spec.num_classes or outputs[1 - i].shape[-1] == spec.num_classes))
        if len(outputs) != 1 or len(outputs[0].shape) != 3:
            return False
        _, q, c = outputs[0].shape
        if q is None or c is None or c <= 6 or not spec.num_classes or c != 4 + spec.num_classes:
            return False  # (B, K, 6) is Ultralytics' end-to-end layout: its metadata names the family
        return not any(q in (count_cells(spec.imgsz, s), 3 * count_cells(spec.imgsz, s)) for s in STRIDE_SETS)

    @classmethod
    def spec_defaults(cls, spec: ModelSpec) -> dict[str, Any]:
        return {"resize": "stretch", "channel_order": "rgb", "scale": 1 / 255}

    def _layout(self, outputs: list[np.ndarray]) -> str:
        if self.layout is None:
            if len(outputs) == 2:
                self.layout = "split"
            elif outputs[0].shape[-1] != 6:
                self.layout = "scores"
            elif self.spec.num_classes == 2:  # (B, Q, 6) is both; the topk layout's last column holds integers
                col = outputs[0][..., 5]
                self.layout = "topk" if np.array_equal(col, np.round(col)) else "scores"
            else:
                self.layout = "topk"
        return self.layout

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Detections]:
        """No NMS: ``iou`` and ``agnostic`` do not apply; ``conf``, ``classes`` and ``max_det`` do."""
        o = self.resolve_options(options)
        conf, max_det, classes = o.conf, o.max_det, o.classes
        layout = self._layout(outputs)
        h, w = self.spec.imgsz  # type: ignore[misc]
        if layout == "split":
            if len(outputs) != 2 or self._boxes_index is None:
                raise ModelError("RT-DETR 'split' layout needs two outputs: boxes (B, Q, 4) and logits (B, Q, nc)")
            boxes_all = np.asarray(outputs[self._boxes_index], np.float32)
            logits = np.asarray(outputs[1 - self._boxes_index], np.float32)
            flag = self.spec.extra.get("rtdetr_probs")
            if flag is None:  # logits unless every value already is a probability
                flag = bool(logits.size) and float(logits.min()) >= 0 and float(logits.max()) <= 1
            with np.errstate(over="ignore"):
                probs = logits if flag else 1 / (1 + np.exp(-logits))
        else:
            out = np.asarray(outputs[0], np.float32)
        results = []
        for b, info in enumerate(infos):
            if layout == "topk":
                boxes, scores, cls = out[b, :, :4], out[b, :, 4], out[b, :, 5].astype(np.int64)
            elif layout == "scores":
                sc = out[b, :, 4:]
                cls = sc.argmax(-1)
                boxes, scores = out[b, :, :4], sc[np.arange(len(sc)), cls]
                order = np.argsort(-scores, kind="stable")
                boxes, scores, cls = boxes[order], scores[order], cls[order]
            else:
                nc = probs.shape[2]
                flat = probs[b].reshape(-1)
                k = min(NUM_TOP_QUERIES, flat.size)
                top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
                top = top[np.argsort(-flat[top], kind="stable")]
                scores, cls = flat[top], top % nc
                boxes = boxes_all[b][top // nc]
            keep = scores > conf
            if classes is not None:
                keep &= np.isin(cls, classes)
            boxes, scores, cls = boxes[keep][:max_det], scores[keep][:max_det], cls[keep][:max_det]
            xyxy = cxcywh_to_xyxy(boxes.astype(np.float32)) * np.array([w, h, w, h], np.float32)
            unletterbox_boxes(xyxy, info)
            results.append(Detections(xyxy, scores, cls, self.spec.names, info.orig_shape))
        return results
