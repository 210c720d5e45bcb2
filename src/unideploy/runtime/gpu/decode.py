"""Image decoding into (3, H, W) uint8 RGB tensors on the model's device.

On CUDA, JPEG files are decoded in batches with nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``,
EXIF orientation applied like OpenCV's ``IMREAD_COLOR``); anything else (PNG, BMP, WebP, a JPEG nvJPEG
rejects, CMYK) is decoded on the CPU with :func:`unideploy.core.sources.decode_image` (the same decoder and the
same error messages as the CPU predictor) and uploaded. On other devices every image goes through
``decode_image``, so the CPU run of the GPU predictor sees exactly the pixels of the CPU predictor.

Note: nvJPEG and libjpeg (OpenCV) use different IDCTs, so decoded JPEG pixels differ by a few grey levels
between the CUDA path and the CPU path.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from unideploy.core.errors import ImageDecodeError, UnideployError
from unideploy.core.sources import MAX_PIXELS, _jpeg_truncated, decode_image


def is_jpeg(data: bytes | np.ndarray) -> bool:
    head = bytes(data[:3]) if isinstance(data, (bytes, bytearray, memoryview)) else data[:3].tobytes()
    return head == b"\xff\xd8\xff"


def cpu_decode_to_tensor(data: np.ndarray, name: str, device: Any) -> Any:
    """Decode with OpenCV (BGR), return a (3, H, W) RGB uint8 tensor on ``device``."""
    import torch

    bgr = decode_image(data, name)
    rgb = np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))
    return torch.from_numpy(rgb).to(device, non_blocking=True)


def decode_batch(datas: Sequence[np.ndarray], names: Sequence[str], device: Any) -> list[Any]:
    """Decode encoded images; returns a (3, H, W) uint8 RGB tensor or an :class:`ImageDecodeError` per item."""
    import torch

    out: list[Any] = [None] * len(datas)
    gpu_jpegs: list[int] = []
    for i, (data, name) in enumerate(zip(datas, names)):
        if device.type == "cuda" and data.size and is_jpeg(data) and not _jpeg_truncated(data):
            gpu_jpegs.append(i)
            continue
        try:
            out[i] = cpu_decode_to_tensor(data, name, device)
        except UnideployError as e:
            out[i] = e
    if gpu_jpegs:
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.from_numpy(np.asarray(datas[i], np.uint8)) for i in gpu_jpegs]
        try:
            decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        except (RuntimeError, TypeError):  # one bad file fails the whole batch: decode one by one
            decoded = []
            for t in tensors:
                try:
                    decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
                except (RuntimeError, TypeError):
                    decoded.append(None)
        for i, img in zip(gpu_jpegs, decoded):
            if img is None:  # nvJPEG refused it (CMYK, progressive corner cases ...): the CPU decoder decides
                try:
                    out[i] = cpu_decode_to_tensor(datas[i], names[i], device)
                except UnideployError as e:
                    out[i] = e
            elif img.shape[1] * img.shape[2] > MAX_PIXELS:
                out[i] = ImageDecodeError(f"{names[i]}: image has {img.shape[2]}x{img.shape[1]} pixels, above the limit of {MAX_PIXELS}")
            else:
                out[i] = img
    return out
