"""Adapter contract: preprocessing and postprocessing of one model family, in numpy.

``preprocess`` turns one decoded BGR uint8 image into the model's input tensor (without the batch
axis) plus whatever ``postprocess`` needs to map results back (a LetterboxInfo); ``postprocess``
turns one batch of raw outputs into one result per image.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import cv2
import numpy as np

from ..backends.base import TensorInfo
from ..ops.letterbox import LetterboxInfo, letterbox
from ..spec import ModelSpec


class Adapter:
    """Base adapter: generic preprocessing driven by the spec; subclasses implement ``postprocess``."""

    name: ClassVar[str] = "?"
    task: ClassVar[str] = "detect"

    def __init__(self, spec: ModelSpec, outputs: Sequence[TensorInfo] = ()) -> None:
        self.spec = spec
        self.outputs = list(outputs)
        if spec.imgsz is None:
            raise ValueError("spec.imgsz must be resolved before building an adapter")
        self._mean = np.array(spec.mean, np.float32).reshape(3, 1, 1)
        self._std = np.array(spec.std, np.float32).reshape(3, 1, 1)
        self._plain = spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        """True when this adapter recognises the model from its spec and output layout."""
        return False

    # -- preprocessing ------------------------------------------------------------------------
    def resize(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """Geometric part: letterbox / stretch / crop to ``spec.imgsz``."""
        h, w = self.spec.imgsz  # type: ignore[misc]
        mode = self.spec.resize
        if mode in ("letterbox", "letterbox_topleft"):
            return letterbox(img, (h, w), pad_value=self.spec.pad_value, center=mode == "letterbox")
        h0, w0 = img.shape[:2]
        if mode == "stretch":
            out = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
            return out, LetterboxInfo((h0, w0), (w, h), (0, 0), (w / w0, h / h0))
        # crop: resize the short side to the target, then centre-crop
        r = max(h / h0, w / w0)
        nw, nh = max(round(w0 * r), w), max(round(h0 * r), h)
        out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        top, left = (nh - h) // 2, (nw - w) // 2
        out = out[top : top + h, left : left + w]
        return out, LetterboxInfo((h0, w0), (nw, nh), (-left, -top), (nw / w0, nh / h0))

    def to_tensor(self, img: np.ndarray) -> np.ndarray:
        """Colour order, scale, mean/std and layout: HWC BGR uint8 -> model input (no batch axis)."""
        if self.spec.channel_order == "rgb":
            img = img[..., ::-1]
        if self.spec.layout == "nhwc":
            x = np.ascontiguousarray(img).astype(self.spec.input_dtype)
            if self.spec.input_dtype != "uint8":
                x /= np.float32(1 / self.spec.scale) if self.spec.scale else 1
            return x
        x = np.ascontiguousarray(img.transpose(2, 0, 1))
        if self.spec.input_dtype == "uint8":
            return x
        x = x.astype(np.float32)
        if self.spec.scale and self.spec.scale != 1:
            x /= np.float32(1 / self.spec.scale)
        if not self._plain:
            x -= self._mean
            x /= self._std
        return x.astype(self.spec.input_dtype, copy=False)

    def preprocess(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """One HWC BGR uint8 image -> (input tensor without batch axis, mapping info)."""
        resized, info = self.resize(img)
        return self.to_tensor(resized), info

    # -- postprocessing -----------------------------------------------------------------------
    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo], **options: Any) -> list[Any]:
        """Raw batched outputs -> one result per image."""
        raise NotImplementedError
