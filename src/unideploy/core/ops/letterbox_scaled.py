"""Decoding at the scale needed: JPEG DCT scaling (1/2, 1/4, 1/8) before the letterbox, and the box mapping.

A JPEG much larger than the model input is decoded by libjpeg at a reduced scale (OpenCV's
``IMREAD_REDUCED_COLOR_2/4/8``: the inverse DCT computes fewer output pixels, so decoding costs a fraction of the
full decode), at the smallest scale that is still at least the size the resize makes, then letterboxed as usual.
The decoded image is a :class:`ScaledImage`, a numpy array that remembers the size of the full image and the
scale it was decoded at, and :func:`full_size_info` turns the letterbox mapping of the reduced image into one of
the full image, so boxes come back in the original image's pixels.

libjpeg's reduced image has ``ceil(side / k)`` pixels per side, and reduced pixel ``i`` covers original pixels
``[k * i, k * (i + 1))``: a coordinate on the reduced image times ``k`` is the coordinate on the full image.

Example:
    >>> import numpy as np
    >>> img = ScaledImage.wrap(np.zeros((750, 1000, 3), np.uint8), (3000, 4000), 4)
    >>> img.full_shape, img.factor
    ((3000, 4000), 4)
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from unideploy.core.ops.letterbox import LetterboxInfo

__all__ = ["DCT_FACTORS", "REDUCED_FLAGS", "ScaledImage", "dct_factor", "full_shape_of", "full_size_info"]

#: the scales libjpeg's DCT scaling decodes at through OpenCV, largest first
DCT_FACTORS = (8, 4, 2)
#: OpenCV imdecode flag per scale denominator
REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


class ScaledImage(np.ndarray):
    """A decoded image smaller than its file: ``full_shape`` (height, width) of the full image, ``factor`` k.

    Slices and views keep both attributes; OpenCV results and copies made with ``np.asarray`` are plain arrays.
    """

    full_shape: tuple[int, int]
    factor: int

    @classmethod
    def wrap(cls, img: np.ndarray, full_shape: tuple[int, int], factor: int) -> ScaledImage:
        """``img`` (decoded at 1/``factor``) as a ScaledImage of an image of ``full_shape`` (no copy)."""
        out = img.view(cls)
        out.full_shape = (int(full_shape[0]), int(full_shape[1]))
        out.factor = int(factor)
        return out

    def __array_finalize__(self, obj: Any) -> None:
        self.full_shape = getattr(obj, "full_shape", None)  # type: ignore[assignment]
        self.factor = getattr(obj, "factor", 1)


def dct_factor(h0: int, w0: int, need: tuple[int, int]) -> int:
    """The largest DCT scale k (8, 4, 2; 1 for none) whose decoded image is still at least ``need`` (height, width).

    Example:
        >>> dct_factor(3000, 4000, (480, 640)), dct_factor(3000, 4000, (1500, 2000)), dct_factor(600, 800, (480, 640))
        (4, 2, 1)
    """
    for k in DCT_FACTORS:
        if math.ceil(h0 / k) >= need[0] and math.ceil(w0 / k) >= need[1]:
            return k
    return 1


def full_shape_of(decoded: tuple[int, ...], h0: int, w0: int, factor: int) -> tuple[int, int] | None:
    """The full (height, width) of an image whose header says ``h0 x w0`` and that decoded at 1/``factor`` to
    ``decoded`` (EXIF orientation may have turned it a quarter: then the sides swap); None when the decoded
    size fits neither (the caller decodes the full image instead)."""
    h, w = decoded[:2]
    rh, rw = math.ceil(h0 / factor), math.ceil(w0 / factor)
    if (h, w) == (rh, rw):
        return (h0, w0)
    if (h, w) == (rw, rh):
        return (w0, h0)
    return None


def full_size_info(img: np.ndarray, info: LetterboxInfo) -> LetterboxInfo:
    """``info`` (the mapping of ``img`` into the model input) as a mapping from the full image when ``img`` is a
    :class:`ScaledImage`; else ``info`` unchanged.

    The resize of the reduced image is kept as it was (its size and padding); the gain is divided by the DCT
    scale, so :func:`~unideploy.core.ops.letterbox.unletterbox_boxes` returns full-image pixels, clipped to
    the full image.

    Example:
        >>> img = ScaledImage.wrap(np.zeros((750, 1000, 3), np.uint8), (3000, 4000), 4)
        >>> full_size_info(img, LetterboxInfo((750, 1000), (320, 240), (0, 40), (0.32, 0.32))).gain
        (0.08, 0.08)
    """
    full = getattr(img, "full_shape", None)
    if full is None:
        return info
    k = img.factor  # type: ignore[attr-defined]
    return LetterboxInfo(tuple(full), info.new_unpad, info.pad, (info.gain[0] / k, info.gain[1] / k))  # type: ignore[arg-type]
