"""Pillow's image resizing (the resize torchvision and Ultralytics apply to PIL images), with a numpy twin.

Classifiers are evaluated with ``torchvision.transforms.Resize`` on PIL images, which is Pillow's separable,
antialiased convolution resampling in 8-bit fixed point, not OpenCV's bilinear. :func:`resize_pil` calls Pillow
when it is installed (it always is beside torchvision or Ultralytics, so the reference and this package resize
alike), else a numpy reproduction of Pillow's ``Resample.c`` (``precompute_coeffs``, 22-bit fixed point,
horizontal pass to uint8 then vertical pass). The numpy path is bit-exact to Pillow up to 12.x; Pillow 13 runs
the vertical pass first for some sizes (tall images, for one), which moves some pixels by one grey level.
"""

from __future__ import annotations

import math

import numpy as np

PRECISION_BITS = 32 - 8 - 2


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


def _coeffs(in_size: int, out_size: int, filt: str) -> tuple[np.ndarray, np.ndarray]:
    """Start index (out,) and fixed-point weights (out, ksize) of each output pixel (Pillow's precompute_coeffs)."""
    fn, support = FILTERS[filt]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C (int) truncation; values are > -1
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    w = fn((taps[None, :] + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(taps[None, :] < xmax[:, None], w, 0.0)
    ww = np.zeros((out_size, 1))
    for t in range(ksize):  # summed in tap order, as Pillow does (bit-identical weights)
        ww[:, 0] += w[:, t]
    w = np.divide(w, ww, out=w, where=ww != 0)
    fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)), np.trunc(0.5 + w * (1 << PRECISION_BITS)))
    return xmin, fixed.astype(np.int64)


def _pass(img: np.ndarray, out_size: int, axis: int, filt: str) -> np.ndarray:
    in_size = img.shape[axis]
    xmin, k = _coeffs(in_size, out_size, filt)
    acc = np.full((*img.shape[:axis], out_size, *img.shape[axis + 1 :]), 1 << (PRECISION_BITS - 1), np.int64)
    src = img.astype(np.int64)
    shape = [1] * img.ndim
    shape[axis] = out_size
    for t in range(k.shape[1]):
        wt = k[:, t]
        if not wt.any():
            continue
        idx = np.minimum(xmin + t, in_size - 1)  # beyond a pixel's taps the weight is 0
        acc += np.take(src, idx, axis=axis) * wt.reshape(shape)
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_pil(img: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear",
               backend: str = "auto") -> np.ndarray:
    """Resize a uint8 image (H, W) or (H, W, C) to ``size`` = (width, height) as Pillow's ``Image.resize`` does.

    Args:
        img: uint8 image.
        size: output (width, height), the order Pillow and OpenCV use.
        interpolation: "bilinear" or "bicubic" (Pillow's antialiased filters).
        backend: "auto" (Pillow when importable, else numpy), "pillow" or "numpy".

    Example:
        >>> import numpy as np
        >>> resize_pil(np.zeros((480, 640, 3), np.uint8), (320, 240)).shape
        (240, 320, 3)
    """
    if interpolation not in FILTERS:
        raise ValueError(f"interpolation must be one of {sorted(FILTERS)}, got {interpolation!r}")
    w, h = size
    if backend != "numpy" and img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] == 3):
        try:
            from PIL import Image
        except ImportError:
            if backend == "pillow":
                raise
        else:
            flt = Image.Resampling.BILINEAR if interpolation == "bilinear" else Image.Resampling.BICUBIC
            return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), flt))
    out = img
    if w != img.shape[1]:
        out = _pass(out, w, 1, interpolation)
    if h != img.shape[0]:
        out = _pass(out, h, 0, interpolation)
    return out if out is not img else img.copy()
