"""NanoDet-Plus (github.com/RangiLyu/nanodet), as exported by its ``tools/export_onnx.py``.

Output ``(B, N, nc + 4 * (reg_max + 1))``: per point, nc class scores (already sigmoid) then four distance
distributions of ``reg_max + 1`` bins (logits; reg_max is 7 in every released model). ``N`` counts the points of
strides 8/16/32/64 (``ceil(H/s) * ceil(W/s)`` each), row-major per level; a point's centre prior is
``(x * s, y * s)`` (no half-cell offset).

Decoding follows ``NanoDetPlusHead.get_bboxes``: softmax over each distribution, expectation over bins
``0..reg_max``, times the stride -> distances left/top/right/bottom; ``distance2bbox`` clamped to the input;
then ``multiclass_nms``: every (point, class) pair scoring ``> conf`` is a candidate (multi-label), per-class
NMS (torchvision IoU, ``batched_nms``), top ``max_det`` (NanoDet uses 100; ``--max-det``).

Preprocessing is NanoDet's: the image is warped to the input with ``cv2.warpPerspective`` and a scale matrix
(``keep_ratio: False``, the released configs; ``resize="stretch"``), kept BGR, normalised with
mean (103.53, 116.28, 123.675) and std (57.375, 57.12, 58.395) on 0-255 values. Boxes map back through the
inverse scale and are clipped to the image (``warp_boxes``).
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

import cv2
import numpy as np

from unideploy.runtime.backends.base import TensorInfo
from unideploy.core.errors import ModelError
from unideploy.core.ops.letterbox import LetterboxInfo, unletterbox_boxes
from unideploy.core.ops.nms import batched_nms
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Detections
from unideploy.core.spec import ModelSpec
from unideploy.runtime.families.base import Adapter, count_cells, grid_cells

STRIDES = (8, 16, 32, 64)
NANODET_MEAN = (103.53, 116.28, 123.675)
NANODET_STD = (57.375, 57.12, 58.395)
REG_MAX = 7


def center_priors(imgsz: tuple[int, int], strides: Sequence[int] = STRIDES) -> np.ndarray:
    """(N, 3) x, y, stride of every point, level by level, row-major (``get_single_level_center_priors``)."""
    out = []
    for (h, w), s in zip(grid_cells(imgsz, strides), strides):
        y, x = np.meshgrid(np.arange(h) * s, np.arange(w) * s, indexing="ij")
        out.append(np.stack([x.ravel(), y.ravel(), np.full(h * w, s)], -1))
    return np.concatenate(out).astype(np.float32)


def dfl_distances(reg: np.ndarray, reg_max: int = REG_MAX) -> np.ndarray:
    """(N, 4 * (reg_max + 1)) distribution logits -> (N, 4) expected distances in bins (``Integral``)."""
    x = reg.reshape(len(reg), 4, reg_max + 1).astype(np.float32)
    x = np.exp(x - x.max(-1, keepdims=True))
    x /= x.sum(-1, keepdims=True)
    return x @ np.arange(reg_max + 1, dtype=np.float32)


class NanodetAdapter(Adapter):
    """NanoDet-Plus: ``(B, N, nc + 32)`` outputs with distribution-focal-loss box decoding.

    Example:
        >>> import unideploy
        >>> p = unideploy.load("nanodet-plus-m_320.onnx", family="nanodet", iou=0.6)  # doctest: +SKIP
        >>> dets = p("street.jpg")  # doctest: +SKIP
    """

    name = "nanodet"
    task = "detect"
    #: NanoDet's own test config (score_thr 0.05, nms iou 0.6, max_per_img 100)
    postprocess_defaults = {"conf": 0.05, "iou": 0.6, "max_det": 100}
    layout = "(B, cells of strides 8-64, nc + 4*(reg_max+1)) class scores + distance distributions"

    def __init__(self, spec: ModelSpec, outputs: Sequence[TensorInfo] = (), keep: Collection[str] = ()) -> None:
        super().__init__(spec, outputs, keep)
        self.reg_max = int(self.spec.extra.get("reg_max", REG_MAX))
        self._priors: np.ndarray | None = None

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        if spec.task != "detect" or len(outputs) != 1 or len(outputs[0].shape) != 3:
            return False
        _, n, c = outputs[0].shape
        if n is None or c is None or n != count_cells(spec.imgsz, STRIDES):
            return False
        bins = 4 * (int(spec.extra.get("reg_max", REG_MAX)) + 1)
        return c == spec.num_classes + bins if spec.num_classes else c > bins

    @classmethod
    def spec_defaults(cls, spec: ModelSpec) -> dict[str, Any]:
        return {"channel_order": "bgr", "scale": 1.0, "mean": NANODET_MEAN, "std": NANODET_STD, "resize": "stretch"}

    def resize(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        if self.spec.resize != "stretch":
            return super().resize(img)
        h, w = self.spec.imgsz  # type: ignore[misc]
        h0, w0 = img.shape[:2]
        m = np.diag([w / w0, h / h0, 1.0])  # get_resize_matrix(keep_ratio=False)
        out = cv2.warpPerspective(img, m, dsize=(w, h))
        return out, LetterboxInfo((h0, w0), (w, h), (0, 0), (w / w0, h / h0))

    def _centers(self, n: int) -> np.ndarray:
        if self._priors is None or len(self._priors) != n:
            priors = center_priors(self.spec.imgsz)  # type: ignore[arg-type]
            if len(priors) != n:
                h, w = self.spec.imgsz  # type: ignore[misc]
                raise ModelError(f"NanoDet output has {n} points; expected {len(priors)} for input {h}x{w} "
                                 f"(strides {'/'.join(map(str, STRIDES))})")
            self._priors = priors
        return self._priors

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Detections]:
        o = self.resolve_options(options)
        conf, classes = o.conf, o.classes
        out = np.asarray(outputs[0], np.float32)
        bins = 4 * (self.reg_max + 1)
        nc = out.shape[2] - bins
        if nc < 1:
            raise ModelError(f"NanoDet output has {out.shape[2]} values per point; expected nc + {bins} (reg_max "
                             f"{self.reg_max}); set spec extra 'reg_max' if the model uses another")
        priors = self._centers(out.shape[1])
        h, w = self.spec.imgsz  # type: ignore[misc]
        results = []
        for pred, info in zip(out, infos):
            scores_all = pred[:, :nc]
            if classes is not None:
                scores_all = np.where(np.isin(np.arange(nc), classes), scores_all, 0.0)
            pt, cls = np.nonzero(scores_all > conf)  # multi-label candidates, point-major like masked_select
            scores = scores_all[pt, cls]
            dist = dfl_distances(pred[pt, nc:], self.reg_max) * priors[pt, 2:3]
            cx, cy = priors[pt, 0], priors[pt, 1]
            boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], -1)
            np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
            np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
            k = batched_nms(boxes, scores, cls, o.iou, o.agnostic, max_keep=o.max_det, split=10000)  # split_thr
            boxes, scores, cls = boxes[k], scores[k], cls[k]
            unletterbox_boxes(boxes, info)
            results.append(Detections(boxes, scores, cls, self.spec.names, info.orig_shape))
        return results
