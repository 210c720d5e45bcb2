"""Image classifiers: one ``(B, C)`` output of logits or probabilities -> top-k :class:`Classifications`.

Preprocessing is the torchvision evaluation transform, reproduced on numpy with Pillow-exact resampling
(:func:`unideploy.core.ops.resample.resize_pil`): resize the shorter side to ``floor(size / crop_fraction)`` (the longer
side ``int(short * long / short_side)``, as ``transforms.Resize(int)`` does), centre-crop ``size`` (torchvision's
rounding), RGB, /255, mean/std. Two presets, chosen from the model:

* ImageNet style (torchvision, timm, most ONNX zoo classifiers; the default for a model without metadata):
  ``crop_fraction`` 0.875 (256 -> 224), ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
* Ultralytics ``-cls`` models (recognised from their metadata; Ultralytics >= 8.1 ``classify_transforms``):
  ``crop_fraction`` 1.0, no mean/std. A non-square input is resized to exactly (h, w), as Ultralytics does.

Spec ``extra`` keys: ``crop_fraction``, ``interpolation`` ("bilinear" or "bicubic"). Outputs are treated as
probabilities when every row is within [0, 1] and sums to 1, otherwise softmax is applied.
"""

from __future__ import annotations

import math
from typing import Any, Collection, Sequence

import numpy as np

from unideploy.runtime.backends.base import TensorInfo
from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.ops.resample import resize_pil
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Classifications
from unideploy.core.spec import ModelSpec
from unideploy.runtime.families.base import Adapter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CROP = 0.875


def _logits_shape(o: TensorInfo) -> bool:
    s = o.shape
    return (len(s) == 2 or (len(s) == 4 and s[2:] == (1, 1))) and s[1] is not None and s[1] >= 2


def to_probabilities(x: np.ndarray) -> np.ndarray:
    """Rows of logits -> softmax; rows that already are probabilities (in [0, 1], summing to 1) are kept."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    if x.size and x.min() >= 0 and x.max() <= 1 and np.allclose(x.sum(1), 1.0, atol=1e-3):
        return x
    e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


class ClassifyAdapter(Adapter):
    """Classifiers (torchvision/timm ImageNet style, Ultralytics ``-cls``): softmax + top-k.

    Example:
        >>> import unideploy
        >>> p = unideploy.load("resnet50.onnx", family="classify")  # doctest: +SKIP
        >>> r = p("cat.jpg")  # doctest: +SKIP
        >>> r.top1, r.confidence[:5]  # doctest: +SKIP
    """

    name = "classify"
    task = "classify"
    layout = "(B, C) logits or probabilities"

    def __init__(self, spec: ModelSpec, outputs: Sequence[TensorInfo] = (), keep: Collection[str] = ()) -> None:
        super().__init__(spec, outputs, keep)
        self.crop_fraction = float(self.spec.extra.get("crop_fraction", 1.0))
        if not 0 < self.crop_fraction <= 1:
            from unideploy.core.errors import SpecError

            raise SpecError(f"spec extra 'crop_fraction' must be in (0, 1], got {self.crop_fraction}")
        self.interpolation = str(self.spec.extra.get("interpolation", "bilinear"))

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        if len(outputs) != 1 or not _logits_shape(outputs[0]):
            return False
        return not spec.num_classes or outputs[0].shape[1] == spec.num_classes

    @classmethod
    def spec_defaults(cls, spec: ModelSpec) -> dict[str, Any]:
        if spec.extra.get("preprocess") == "ultralytics":
            return {"task": "classify", "resize": "crop", "extra": {"crop_fraction": 1.0}}
        return {"task": "classify", "resize": "crop", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                "extra": {"crop_fraction": IMAGENET_CROP}}

    def resize(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        if self.spec.resize != "crop":
            return super().resize(img)
        h, w = self.spec.imgsz  # type: ignore[misc]
        h0, w0 = img.shape[:2]
        if h == w:  # transforms.Resize(int): shorter side, longer side truncated
            short = math.floor(h / self.crop_fraction + 1e-9)
            if w0 <= h0:
                nw, nh = short, int(short * h0 / w0)
            else:
                nw, nh = int(short * w0 / h0), short
        else:  # transforms.Resize((h, w)): exact size
            nh, nw = math.floor(h / self.crop_fraction + 1e-9), math.floor(w / self.crop_fraction + 1e-9)
        out = resize_pil(img, (nw, nh), self.interpolation) if (nw, nh) != (w0, h0) else img
        top, left = round((nh - h) / 2.0), round((nw - w) / 2.0)  # transforms.CenterCrop
        out = np.ascontiguousarray(out[top : top + h, left : left + w])
        return out, LetterboxInfo((h0, w0), (nw, nh), (-left, -top), (nw / w0, nh / h0))

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Classifications]:
        """Top-k classes per image (``options.top_k``; the detection thresholds do not apply)."""
        probs = to_probabilities(outputs[0])
        top_k = options.top_k if options is not None else PostprocessOptions().top_k
        k = max(1, min(int(top_k), probs.shape[1]))
        results = []
        for p in probs[: len(infos)]:
            idx = np.argsort(-p, kind="stable")[:k]
            results.append(Classifications(idx, p[idx], self.spec.names, p))
        return results
