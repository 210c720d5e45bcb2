"""YOLOX (Megvii, github.com/Megvii-BaseDetection/YOLOX and the ``yolox`` package).

Output ``(B, N, 5 + nc)`` with ``N = sum(ceil(H/s) * ceil(W/s))`` over strides 8/16/32 (8..64 for P6 models),
objectness and class scores already sigmoid. Two export layouts share that shape:

* raw grid outputs (``tools/export_onnx.py`` default, ``decode_in_inference=False``): x, y are offsets in
  grid units and w, h are log sizes; decoded as ``demo_postprocess`` does: ``(xy + grid) * stride`` and
  ``exp(wh) * stride``;
* decoded in the graph (``--decode_in_inference``): centre-x, centre-y, w, h already in input pixels.

Which one a model has is read from ``spec.extra["decoded"]`` when set, otherwise from the first batch: raw
outputs have negative log sizes or centres near zero, decoded ones sit near their cell's position.

Preprocessing is YOLOX's ``preproc``: resize by ``r = min(H/h0, W/w0)`` to ``int(w0*r) x int(h0*r)`` (truncated),
paste top-left on a 114 canvas, BGR, 0-255 floats, no normalisation; ``extra["legacy"] = True`` selects the
old ``ValTransform(legacy=True)``: RGB, /255, ImageNet mean/std. Postprocessing is ``yolox.utils.postprocess``:
score = obj x best class score, kept when ``>= conf``, class-aware ``batched_nms`` (torchvision IoU), boxes
divided by ``r``; this adapter also clips them to the image and applies ``classes`` and ``max_det``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Collection, Sequence

import numpy as np

from unideploy.runtime.backends.base import TensorInfo
from unideploy.core.ops.boxes import cxcywh_to_xyxy
from unideploy.core.ops.letterbox import LetterboxInfo, letterbox, unletterbox_boxes
from unideploy.core.ops.nms import batched_nms
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Detections
from unideploy.core.spec import ModelSpec
from unideploy.runtime.families.base import Adapter, count_cells, grid_cells
from unideploy.runtime.families.yolov5 import STRIDE_SETS, _dense_layout

__all__ = ["YoloxAdapter", "class_nms", "grid_and_strides"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the class-aware NMS YOLOX's ``batched_nms`` computes (kept under its old name; see core.ops.nms)
class_nms = batched_nms


def grid_and_strides(imgsz: tuple[int, int], strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) cell x, y indices and (N, 1) strides of every anchor point, level by level, row-major."""
    grids, strd = [], []
    for (h, w), s in zip(grid_cells(imgsz, strides), strides):
        yv, xv = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        strd.append(np.full((h * w, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strd).astype(np.float32)


class YoloxAdapter(Adapter):
    """YOLOX: raw grid or decoded ``(B, N, 5 + nc)`` outputs, YOLOX's own BGR 0-255 top-left letterbox.

    Example:
        >>> import unideploy
        >>> p = unideploy.load("yolox_s.onnx", family="yolox", conf=0.3, iou=0.45)  # doctest: +SKIP
        >>> dets = p("dog.jpg")  # doctest: +SKIP
    """

    name = "yolox"
    task = "detect"
    #: YOLOX's demo and eval NMS threshold
    postprocess_defaults = {"conf": 0.25, "iou": 0.45, "max_det": 300}
    layout = "(B, cells of strides 8-32, 5+nc) raw grid or decoded boxes, objectness + class scores"

    def __init__(self, spec: ModelSpec, outputs: Sequence[TensorInfo] = (), keep: Collection[str] = ()) -> None:
        super().__init__(spec, outputs, keep)
        d = self.spec.extra.get("decoded")
        self._decoded: bool | None = None if d is None else bool(d)
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        # P6 models (strides 8..64) have as many points as NanoDet-Plus: only with class names to tell them apart
        return spec.task == "detect" and _dense_layout(spec, outputs, 1, STRIDE_SETS if spec.num_classes else
                                                       STRIDE_SETS[:1])

    @classmethod
    def spec_defaults(cls, spec: ModelSpec) -> dict[str, Any]:
        if spec.extra.get("legacy"):
            return {"channel_order": "rgb", "scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                    "resize": "letterbox_topleft", "pad_value": 114}
        return {"channel_order": "bgr", "scale": 1.0, "resize": "letterbox_topleft", "pad_value": 114}

    def resize(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        if self.spec.resize != "letterbox_topleft":
            return super().resize(img)
        h, w = self.spec.imgsz  # type: ignore[misc]
        out, info = letterbox(img, (h, w), pad_value=self.spec.pad_value, center=False, floor=True)
        r = min(h / img.shape[0], w / img.shape[1])
        return out, replace(info, gain=(r, r))  # YOLOX divides boxes by r, not by the truncated size ratio

    # -- decoding -------------------------------------------------------------------------------
    def _grids(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._grid is None or len(self._grid[0]) != n:
            imgsz = self.spec.imgsz  # type: ignore[assignment]
            for strides in STRIDE_SETS:
                if count_cells(imgsz, strides) == n:
                    self._grid = grid_and_strides(imgsz, strides)  # type: ignore[arg-type]
                    break
            else:
                from unideploy.core.errors import ModelError

                raise ModelError(
                    f"YOLOX output has {n} anchor points; expected {count_cells(imgsz, STRIDE_SETS[0])} (strides "
                    f"8/16/32) or {count_cells(imgsz, STRIDE_SETS[1])} (8..64) for input {imgsz[0]}x{imgsz[1]}"
                )
        return self._grid  # type: ignore[return-value]

    def _is_decoded(self, out: np.ndarray) -> bool:
        if self._decoded is None:
            grid, strides = self._grids(out.shape[1])
            xy = out[..., :2].reshape(-1, out.shape[1], 2)
            if (out[..., 2:4] < 0).any():
                self._decoded = False
            else:  # decoded centres sit near their cell: (xy / stride - grid) is the small raw offset
                off_decoded = np.median(np.abs(xy / strides - grid))
                off_raw = np.median(np.abs(xy))
                self._decoded = bool(off_decoded < off_raw)
        return self._decoded

    def decode(self, out: np.ndarray) -> np.ndarray:
        """Raw grid outputs -> centre-x, centre-y, w, h in input pixels (``demo_postprocess``); a copy."""
        grid, strides = self._grids(out.shape[1])
        out = out.copy()
        out[..., :2] = (out[..., :2] + grid) * strides
        out[..., 2:4] = np.exp(out[..., 2:4]) * strides
        return out

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Detections]:
        o = self.resolve_options(options)
        conf, classes = o.conf, o.classes
        out = np.asarray(outputs[0], np.float32)
        if not self._is_decoded(out):
            with np.errstate(over="ignore"):
                out = self.decode(out)
        results = []
        for pred, info in zip(out, infos):
            cls_all = pred[:, 5:]
            cls = cls_all.argmax(1)
            scores = pred[:, 4] * cls_all[np.arange(len(pred)), cls]
            keep = scores >= conf
            if classes is not None:
                keep &= np.isin(cls, classes)
            boxes, scores, cls = cxcywh_to_xyxy(pred[keep, :4]), scores[keep], cls[keep]
            k = batched_nms(boxes, scores, cls, o.iou, o.agnostic, max_keep=o.max_det)
            boxes, scores, cls = boxes[k], scores[k], cls[k]
            unletterbox_boxes(boxes, info)
            results.append(Detections(boxes, scores, cls, self.spec.names, info.orig_shape))
        return results
