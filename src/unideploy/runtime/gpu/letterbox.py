"""Letterbox on tensors (any torch device), bit-exact with ``ops.letterbox`` (OpenCV ``INTER_LINEAR``).

The geometry (resized size, padding split, gains) is Ultralytics' arithmetic, as in
:func:`unideploy.core.ops.letterbox.letterbox`. The resize reproduces OpenCV's 8-bit bilinear resize exactly:

* horizontal pass: source column ``sx = floor((dx + 0.5) * scale - 0.5)`` (float32), weight ``fx`` the
  fraction, clamped to the border column with ``fx = 0`` outside; weights ``round((1 - fx) * 2048)``,
  ``round(fx * 2048)`` (11-bit fixed point), sums kept as int;
* vertical pass: same formula for rows but, as OpenCV does, the weights are *not* clamped at the borders,
  only the row indices; combined as OpenCV's SIMD kernel does
  ``((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2 >> 2``;
* an exact 2x downscale is OpenCV's INTER_AREA fast path: ``(a + b + c + d + 2) >> 2``.

Checked against ``cv2.resize`` in tests/test_gpu_ops.py (identical pixels on every size tried).

Example:
    >>> import torch
    >>> img = torch.zeros(3, 480, 640, dtype=torch.uint8)
    >>> out, info = letterbox_tensor(img, (640, 640))
    >>> tuple(out.shape), info.pad
    ((3, 640, 640), (0, 80))
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from unideploy.core.ops.letterbox import LetterboxInfo, letterbox_geometry  # noqa: F401  (re-exported)

COEF_BITS = 11
COEF_SCALE = 1 << COEF_BITS


@lru_cache(maxsize=512)
def linear_coeffs(n_in: int, n_out: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR source indices and 11-bit weights for one axis: (i0, i1, w0, w1) int32 arrays."""
    scale = 1.0 / (n_out / n_in)
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_weights:  # columns: outside the image the weight collapses onto the border pixel
        left = s < 0
        f[left], s[left] = 0, 0
        right = s >= n_in - 1
        f[right], s[right] = 0, n_in - 1
    w0 = np.rint((np.float32(1) - f).astype(np.float32) * np.float32(COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(COEF_SCALE)).astype(np.int32)
    i0 = np.clip(s, 0, n_in - 1).astype(np.int64)
    i1 = np.clip(s + 1, 0, n_in - 1).astype(np.int64)
    return i0, i1, w0, w1


_DEVICE_COEFFS: dict[tuple[int, int, bool, str], tuple[Any, ...]] = {}


def _coeffs_on(n_in: int, n_out: int, clamp_weights: bool, device: Any) -> tuple[Any, ...]:
    import torch

    key = (n_in, n_out, clamp_weights, str(device))
    got = _DEVICE_COEFFS.get(key)
    if got is None:
        if len(_DEVICE_COEFFS) > 2048:
            _DEVICE_COEFFS.clear()
        i0, i1, w0, w1 = linear_coeffs(n_in, n_out, clamp_weights)
        got = tuple(torch.from_numpy(a).to(device, non_blocking=True) for a in (i0, i1, w0, w1))
        _DEVICE_COEFFS[key] = got
    return got


def resize_linear(img: Any, size: tuple[int, int]) -> Any:
    """OpenCV-exact ``cv2.resize(img, (w, h), interpolation=INTER_LINEAR)`` of a (C, H, W) uint8 tensor.

    Args:
        img: (C, H, W) uint8 tensor on any device.
        size: output (height, width).

    Example:
        >>> import torch
        >>> resize_linear(torch.zeros(3, 8, 8, dtype=torch.uint8), (4, 4)).shape
        torch.Size([3, 4, 4])
    """
    import torch

    c, h0, w0 = img.shape
    h, w = int(size[0]), int(size[1])
    if (h, w) == (h0, w0):
        return img.clone()
    if h0 == 2 * h and w0 == 2 * w:  # OpenCV switches an exact 2x linear downscale to INTER_AREA
        x = img.to(torch.int32)
        s = x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]
        return ((s + 2) >> 2).to(torch.uint8)
    xi0, xi1, a0, a1 = _coeffs_on(w0, w, True, img.device)
    yi0, yi1, b0, b1 = _coeffs_on(h0, h, False, img.device)
    src = img.to(torch.int32)
    rows0, rows1 = src.index_select(1, yi0), src.index_select(1, yi1)
    r0 = rows0.index_select(2, xi0) * a0 + rows0.index_select(2, xi1) * a1  # horizontal pass, int
    r1 = rows1.index_select(2, xi0) * a0 + rows1.index_select(2, xi1) * a1
    b0v, b1v = b0.view(1, -1, 1), b1.view(1, -1, 1)
    out = (((r0 >> 4) * b0v) >> 16) + (((r1 >> 4) * b1v) >> 16)
    return ((out + 2) >> 2).clamp_(0, 255).to(torch.uint8)


def letterbox_tensor(img: Any, new_shape: tuple[int, int], *, pad_value: int = 114, center: bool = True,
                     scaleup: bool = True, out: Any = None) -> tuple[Any, LetterboxInfo]:
    """Letterbox one (C, H, W) uint8 tensor; same pixels and mapping as ``ops.letterbox.letterbox``.

    Args:
        img: (C, H, W) uint8 tensor (channel order is kept).
        new_shape: target (height, width).
        pad_value: constant for the padding.
        center: pad on both sides (Ultralytics) or right/bottom only.
        out: optional (C, H, W) uint8 tensor to write into (e.g. one slot of a batch buffer).
    """
    import torch

    c, h0, w0 = img.shape
    info, (top, bottom, left, right) = letterbox_geometry(h0, w0, tuple(new_shape), center=center, scaleup=scaleup)
    nw, nh = info.new_unpad
    resized = img if (nw, nh) == (w0, h0) else resize_linear(img, (nh, nw))
    if out is None:
        out = torch.empty((c, new_shape[0], new_shape[1]), dtype=torch.uint8, device=img.device)
    out.fill_(pad_value)
    out[:, top : top + nh, left : left + nw] = resized
    return out, info


def letterbox_batch(images: Sequence[Any], new_shape: tuple[int, int], *, pad_value: int = 114, center: bool = True,
                    out: Any = None) -> tuple[Any, list[LetterboxInfo]]:
    """Letterbox several (C, H, W) uint8 tensors into one (N, C, H, W) uint8 batch tensor."""
    import torch

    if out is None:
        dev = images[0].device
        out = torch.empty((len(images), images[0].shape[0], new_shape[0], new_shape[1]), dtype=torch.uint8, device=dev)
    infos = []
    for i, img in enumerate(images):
        _, info = letterbox_tensor(img, new_shape, pad_value=pad_value, center=center, out=out[i])
        infos.append(info)
    return out, infos


def normalize_batch(batch: Any, *, dtype: Any, scale: float = 1 / 255, mean: Sequence[float] = (0.0, 0.0, 0.0),
                    std: Sequence[float] = (1.0, 1.0, 1.0), reverse_channels: bool = False) -> Any:
    """(N, C, H, W) uint8 -> model input: optional channel reversal, ``x * scale``, then ``(x - mean) / std``.

    Matches ``Adapter.to_tensor`` (which divides by ``1 / scale`` in float32).
    """
    import torch

    x = batch.flip(1) if reverse_channels else batch
    x = x.to(torch.float32)
    if scale and scale != 1:
        x = x / float(np.float32(1 / scale))
    if tuple(mean) != (0.0, 0.0, 0.0) or tuple(std) != (1.0, 1.0, 1.0):
        m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        x = (x - m) / s
    return x.to(dtype)
