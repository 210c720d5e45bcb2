"""Adapter contract: preprocessing and postprocessing of one model family, in numpy.

``preprocess`` turns one decoded BGR uint8 image into the model's input tensor (without the batch
axis) plus whatever ``postprocess`` needs to map results back (a LetterboxInfo); ``postprocess``
turns one batch of raw outputs into one result per image, with thresholds from a
:class:`~unideploy.core.options.PostprocessOptions` whose unset fields take the family's
``postprocess_defaults``.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any, ClassVar, Collection, Mapping, Sequence

import cv2
import numpy as np

from unideploy.runtime.backends.base import TensorInfo
from unideploy.core.ops.letterbox import LetterboxInfo, letterbox
from unideploy.core.ops.letterbox_scaled import dct_factor, full_size_info
from unideploy.core.options import GENERIC_DEFAULTS, PostprocessOptions
from unideploy.core.spec import ModelSpec

__all__ = ["Adapter", "grid_cells", "count_cells"]


class Adapter:
    """Base adapter: generic preprocessing driven by the spec; subclasses implement ``postprocess``."""

    name: ClassVar[str] = "?"
    task: ClassVar[str] = "detect"
    #: the output layouts this adapter reads, for error messages
    layout: ClassVar[str] = ""
    #: thresholds used where the caller leaves a :class:`PostprocessOptions` field unset (None); a family whose
    #: reference code uses other values declares its own (YOLOX and YOLOv5: iou 0.45)
    postprocess_defaults: ClassVar[Mapping[str, Any]] = GENERIC_DEFAULTS

    def __init__(self, spec: ModelSpec, outputs: Sequence[TensorInfo] = (), keep: Collection[str] = ()) -> None:
        spec = type(self).default_spec(spec, keep)  # ``keep``: spec fields the caller set explicitly
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

    @classmethod
    def spec_defaults(cls, spec: ModelSpec) -> dict[str, Any]:
        """The family's own preprocessing (spec field -> value), e.g. YOLOX's BGR 0-255 input."""
        return {}

    @classmethod
    def default_spec(cls, spec: ModelSpec, keep: Collection[str] = ()) -> ModelSpec:
        """``spec`` with the family's defaults filled in where the model and the user left a field generic.

        A field takes the family default when it still holds ``ModelSpec``'s generic default and is not
        named in ``keep`` (the fields the caller set explicitly). ``extra`` defaults are merged key by key.

        Example:
            >>> from unideploy.runtime.families import get_adapter
            >>> get_adapter("yolox").default_spec(ModelSpec(imgsz=(416, 416))).channel_order
            'bgr'
        """
        generic = {f.name: getattr(ModelSpec(), f.name) for f in fields(ModelSpec)}
        changes: dict[str, Any] = {}
        for key, value in cls.spec_defaults(spec).items():
            if key == "extra":
                changes["extra"] = {**value, **spec.extra}
            elif key not in keep and getattr(spec, key) == generic[key]:
                changes[key] = value
        if spec.family is None and cls.name != "?":
            changes["family"] = cls.name
        return replace(spec, **changes) if changes else spec

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

    def decode_factor(self, h0: int, w0: int) -> int:
        """The JPEG DCT scale (1, 2, 4 or 8) to decode an ``h0 x w0`` image at for :meth:`resize`: the largest whose
        decoded image is still at least as large as what the resize makes of the full image (so the resize only
        shrinks). Used by ``fast_decode`` (:mod:`unideploy.core.ops.letterbox_scaled`).

        Example:
            >>> from unideploy.runtime.families import get_adapter
            >>> get_adapter("yolo")(ModelSpec(imgsz=(640, 640))).decode_factor(3000, 4000)
            4
        """
        h, w = self.spec.imgsz  # type: ignore[misc]
        if self.spec.resize == "stretch":
            return dct_factor(h0, w0, (h, w))
        if self.spec.resize == "crop":
            r = max(h / h0, w / w0) / float(self.spec.extra.get("crop_fraction", 1.0))
        else:
            r = min(h / h0, w / w0)
        return dct_factor(h0, w0, (math.ceil(h0 * r), math.ceil(w0 * r)))

    def to_tensor(self, img: np.ndarray) -> np.ndarray:
        """Colour order, scale, mean/std and layout: HWC BGR uint8 -> model input (no batch axis).

        A model that does this itself (``spec.in_model``) takes the resized uint8 image as it is (flipped to RGB
        when ``spec.in_model_order`` says so): no float conversion on the host.
        """
        if self.spec.in_model:
            return self._in_model_image(img)
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
        self._normalise(x)
        return x.astype(self.spec.input_dtype, copy=False)

    def _in_model_image(self, img: np.ndarray) -> np.ndarray:
        """The uint8 HWC image a model with in-model preprocessing takes (in ``spec.in_model_order``)."""
        if img.dtype != np.uint8:
            raise ValueError(f"in-model preprocessing takes uint8 images, got {img.dtype}")
        if self.spec.in_model_order == "rgb":
            img = img[..., ::-1]
        return np.ascontiguousarray(img)

    def _normalise(self, x: np.ndarray) -> None:
        """Scale and mean/std, in place, on float32 NCHW values (one image or a batch)."""
        if self.spec.scale and self.spec.scale != 1:
            x /= np.float32(1 / self.spec.scale)
        if not self._plain:
            x -= self._mean
            x /= self._std

    @property
    def reuses_batch_buffer(self) -> bool:
        """Whether :meth:`to_batch` writes into ``out`` and returns it (float32 NCHW inputs); other layouts and
        dtypes build a new array per batch, so a caller's pool would only hold memory for them."""
        return not self.spec.in_model and self.spec.layout != "nhwc" and np.dtype(self.spec.input_dtype) == np.float32

    def to_batch(self, imgs: Sequence[np.ndarray], size: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Resized HWC BGR uint8 images -> one model input batch, written in place (no per-image float tensors,
        no stacking copy); equal to ``np.stack([to_tensor(i) for i in imgs])``. ``size`` pads the batch with
        zero images to a fixed batch size; ``out``, a float32 array of the batch's shape, is reused when given
        (a streaming caller's buffer pool: no large allocation, and no page faults, per batch)."""
        n = len(imgs)
        if self.spec.in_model and n:  # uint8 NHWC: one copy of the images into the batch, no float work
            h, w, c = imgs[0].shape
            batch = np.zeros((max(n, size or 0), h, w, c), np.uint8)
            for k, img in enumerate(imgs):
                batch[k] = img[..., ::-1] if self.spec.in_model_order == "rgb" else img
            return batch
        if self.spec.layout == "nhwc" or self.spec.input_dtype == "uint8" or not n:
            xs = [self.to_tensor(i) for i in imgs]
            if size and size > n:
                xs += [np.zeros_like(xs[0])] * (size - n)
            return np.stack(xs)
        h, w = imgs[0].shape[:2]
        shape = (max(n, size or 0), imgs[0].shape[2], h, w)
        if out is None or out.shape != shape or out.dtype != np.float32:
            out = np.empty(shape, np.float32)
        for k, img in enumerate(imgs):
            if self.spec.channel_order == "rgb":
                img = img[..., ::-1]
            out[k] = img.transpose(2, 0, 1)  # uint8 -> float32 on assignment, exact
        if size and size > n:
            out[n:] = 0
        self._normalise(out[:n])  # padding rows stay zero
        return out.astype(self.spec.input_dtype, copy=False)

    def preprocess(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """One HWC BGR uint8 image -> (input tensor without batch axis, mapping info); the mapping is from the
        full image when ``img`` was decoded at a reduced scale (a :class:`~unideploy.core.ops.letterbox_scaled.ScaledImage`)."""
        resized, info = self.resize(img)
        return self.to_tensor(resized), full_size_info(img, info)

    # -- postprocessing -----------------------------------------------------------------------
    def resolve_options(self, options: PostprocessOptions | None = None) -> PostprocessOptions:
        """``options`` (None: all defaults) with every unset threshold taken from :attr:`postprocess_defaults`.

        Example:
            >>> from unideploy.runtime.families import get_adapter
            >>> get_adapter("yolox")(ModelSpec(imgsz=(416, 416))).resolve_options(PostprocessOptions(conf=0.3)).iou
            0.45
        """
        return (options if options is not None else PostprocessOptions()).resolved(self.postprocess_defaults)

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Any]:
        """Raw batched outputs -> one result per image.

        Args:
            outputs: the session's outputs for one batch.
            infos: the mapping of each image (its length is the number of images; padding rows are ignored).
            options: thresholds; unset fields (and ``None``) take the family's :attr:`postprocess_defaults`.
        """
        raise NotImplementedError


def grid_cells(imgsz: tuple[int, int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """Feature-map (height, width) per stride for an input of ``imgsz``: ceil(size / stride), as strided convs give.

    Example:
        >>> grid_cells((320, 320), (8, 16, 32))
        [(40, 40), (20, 20), (10, 10)]
    """
    return [(math.ceil(imgsz[0] / s), math.ceil(imgsz[1] / s)) for s in strides]


def count_cells(imgsz: tuple[int, int] | None, strides: Sequence[int]) -> int:
    """Total number of grid cells over ``strides`` (0 when the input size is unknown)."""
    if not imgsz:
        return 0
    return sum(h * w for h, w in grid_cells(imgsz, strides))
