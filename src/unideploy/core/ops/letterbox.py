"""Letterbox resize (aspect-preserving resize + constant padding) and its inverse for boxes.

The arithmetic follows Ultralytics' ``LetterBox`` exactly (rounding of the resized size and of the
padding split), so that a model exported by Ultralytics sees the same pixels here as in Ultralytics.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from unideploy.core.ops.boxes import clip_boxes


@dataclass(frozen=True)
class LetterboxInfo:
    """How one image was mapped into the model input.

    Attributes:
        orig_shape: (height, width) of the original image.
        new_unpad: (width, height) of the resized image before padding.
        pad: (left, top) padding in pixels.
        gain: (gain_x, gain_y) = resized / original size.
    """

    orig_shape: tuple[int, int]
    new_unpad: tuple[int, int]
    pad: tuple[int, int]
    gain: tuple[float, float]

    def to_dict(self) -> dict:
        return {"orig_shape": list(self.orig_shape), "new_unpad": list(self.new_unpad), "pad": list(self.pad), "gain": list(self.gain)}

    @classmethod
    def from_dict(cls, d: dict) -> LetterboxInfo:
        return cls(tuple(d["orig_shape"]), tuple(d["new_unpad"]), tuple(d["pad"]), tuple(d["gain"]))  # type: ignore[arg-type]


def letterbox_geometry(
    h0: int, w0: int, new_shape: tuple[int, int], *, center: bool = True, scaleup: bool = True, floor: bool = False
) -> tuple[LetterboxInfo, tuple[int, int, int, int]]:
    """Ultralytics' letterbox arithmetic for an (h0, w0) image: (info, (top, bottom, left, right) padding).

    Shared by :func:`letterbox` (OpenCV) and the tensor letterbox of :mod:`unideploy.runtime.gpu`, so both place
    pixels identically. ``floor`` truncates the resized size (YOLOX) instead of rounding (Ultralytics).

    Example:
        >>> info, (top, bottom, left, right) = letterbox_geometry(480, 640, (640, 640))
        >>> info.new_unpad, top, bottom
        ((640, 480), 80, 80)
    """
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    if not scaleup:
        r = min(r, 1.0)
    if floor:
        new_unpad = (max(int(w0 * r), 1), max(int(h0 * r), 1))
    else:
        new_unpad = (max(round(w0 * r), 1), max(round(h0 * r), 1))
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if center:
        dw /= 2
        dh /= 2
        top, bottom = round(dh - 0.1), round(dh + 0.1)
        left, right = round(dw - 0.1), round(dw + 0.1)
    else:
        top, bottom, left, right = 0, int(dh), 0, int(dw)
    info = LetterboxInfo((h0, w0), new_unpad, (left, top), (new_unpad[0] / w0, new_unpad[1] / h0))
    return info, (top, bottom, left, right)


def letterbox(
    img: np.ndarray,
    new_shape: tuple[int, int],
    *,
    pad_value: int = 114,
    center: bool = True,
    scaleup: bool = True,
    interpolation: int = cv2.INTER_LINEAR,
    floor: bool = False,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize ``img`` (H, W, C) to fit ``new_shape`` (height, width) keeping aspect ratio, then pad.

    Args:
        img: HWC uint8 image.
        new_shape: target (height, width).
        pad_value: constant used for the padding.
        center: pad on both sides (Ultralytics) or only right/bottom (YOLOX).
        scaleup: allow enlarging small images.
        interpolation: OpenCV interpolation flag for the resize.
        floor: truncate the resized size (YOLOX's ``int(w0 * r)``) instead of rounding it (Ultralytics).

    Returns:
        The padded image of shape (new_shape[0], new_shape[1], C) and the mapping used.

    Example:
        >>> import numpy as np
        >>> out, info = letterbox(np.zeros((480, 640, 3), np.uint8), (640, 640))
        >>> out.shape, info.pad
        ((640, 640, 3), (0, 80))
    """
    h0, w0 = img.shape[:2]
    info, (top, bottom, left, right) = letterbox_geometry(h0, w0, new_shape, center=center, scaleup=scaleup, floor=floor)
    new_unpad = info.new_unpad
    if (w0, h0) != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=interpolation)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 3:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    else:
        out = np.full((new_shape[0], new_shape[1], img.shape[2]), pad_value, dtype=img.dtype)
        out[top : top + new_unpad[1], left : left + new_unpad[0]] = img
        img = out
    return img, info


def unletterbox_boxes(xyxy: np.ndarray, info: LetterboxInfo, clip: bool = True) -> np.ndarray:
    """Map xyxy boxes from model-input pixels back to the original image (in place); returns them."""
    xyxy[..., 0::2] -= info.pad[0]
    xyxy[..., 1::2] -= info.pad[1]
    xyxy[..., 0::2] /= info.gain[0]
    xyxy[..., 1::2] /= info.gain[1]
    return clip_boxes(xyxy, info.orig_shape) if clip else xyxy
