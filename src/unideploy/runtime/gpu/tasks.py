"""Segmentation and pose postprocessing of a whole batch on the model's device (the GPU predictor's task path).

The box stage is the detector's (:func:`unideploy.runtime.gpu.postprocess.nms_batch`: same candidates, NMS and
letterbox mapping as the CPU adapters). Then, still on the device:

- ``-seg``: each kept instance's mask coefficients times the image's prototypes, resampled to the original image
  with the two matrices :func:`unideploy.core.ops.masks.proto_resample_matrices` gives (Ultralytics'
  ``process_mask_native``: upsample, cut the letterbox padding, resize, threshold at 0, zero outside the box), in
  chunks of instances so that memory stays bounded; instances whose mask is empty are dropped, as Ultralytics does.
  With ``retina_masks=False``, Ultralytics' default path instead (:func:`assemble_masks_input_tensor`: masks at the
  model input size, then mapped onto the image as its plotting does), the same as the CPU adapter;
- ``-pose``: the keypoints of the kept anchors mapped back through the letterbox and clipped.

Each image's results are copied to the host once. The CPU adapters (``yolo_seg`` / ``yolo_pose``) are the reference:
the tests compare both on CPU tensors (masks agree up to pixels whose logit is within float rounding of 0).

Example:
    >>> segs = postprocess_segment(pred, protos, infos, opts, names=names, nc=80, ratio=4)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.ops.masks import proto_resample_matrices
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Keypoints, Masks, Poses, Segmentations
from unideploy.runtime.gpu.postprocess import letterbox_table, nms_batch

__all__ = ["MASK_CHUNK_PIXELS", "assemble_masks_input_tensor", "assemble_masks_tensor", "postprocess_pose",
           "postprocess_segment"]

#: at most this many float32 mask pixels are held per chunk of instances (256 MiB)
MASK_CHUNK_PIXELS = 64 * 2**20


@lru_cache(maxsize=64)
def _matrices(proto_hw: tuple[int, int], shape: tuple[int, int], ratio: int) -> tuple[np.ndarray, np.ndarray]:
    return proto_resample_matrices(proto_hw, shape, ratio)


def assemble_masks_tensor(protos: Any, coeffs: Any, boxes: Any, shape: tuple[int, int], ratio: int = 4) -> Any:
    """(N, H, W) bool masks on the device, as :func:`unideploy.core.ops.masks.assemble_masks` computes them on CPU.

    Args:
        protos: (C, mh, mw) prototypes of one image (a tensor on the device).
        coeffs: (N, C) mask coefficients of the kept instances.
        boxes: (N, 4) xyxy boxes in original image pixels.
        shape: original image (height, width).
        ratio: model input size / prototype size.
    """
    import torch

    h, w = shape
    c, mh, mw = protos.shape
    dev = protos.device
    n = int(coeffs.shape[0])
    out = torch.zeros((n, h, w), dtype=torch.bool, device=dev)
    if not n:
        return out
    ay_np, ax_np = _matrices((int(mh), int(mw)), (int(h), int(w)), int(ratio))
    ay, ax = torch.from_numpy(ay_np).to(dev), torch.from_numpy(ax_np).to(dev)
    logits = (coeffs.float() @ protos.float().reshape(c, -1)).reshape(n, mh, mw)
    edges = torch.ceil(boxes.to(torch.float64))
    x1, x2 = edges[:, 0].clamp(0, w).long(), edges[:, 2].clamp(0, w).long()  # columns x1 <= col < x2
    y1, y2 = edges[:, 1].clamp(0, h).long(), edges[:, 3].clamp(0, h).long()
    cols, rows = torch.arange(w, device=dev), torch.arange(h, device=dev)
    step = max(1, MASK_CHUNK_PIXELS // max(1, h * w))
    for s in range(0, n, step):
        e = min(n, s + step)
        full = ay @ logits[s:e] @ ax.T  # (k, H, W): the composition of Ultralytics' resamplings
        inside = ((rows[None, :, None] >= y1[s:e, None, None]) & (rows[None, :, None] < y2[s:e, None, None])
                  & (cols[None, None, :] >= x1[s:e, None, None]) & (cols[None, None, :] < x2[s:e, None, None]))
        out[s:e] = (full > 0) & inside
    return out


def assemble_masks_input_tensor(protos: Any, coeffs: Any, boxes: Any, input_hw: tuple[int, int],
                                shape: tuple[int, int]) -> tuple[Any, Any]:
    """Ultralytics' default (``retina_masks=False``) masks on the device, as
    :func:`unideploy.core.ops.masks.assemble_masks_input` computes them on CPU.

    ``coeffs @ protos`` upsampled bilinearly to the input size, thresholded at 0 and cut to each box in input
    pixels (``process_mask(upsample=True)``); then the letterbox content cut out, resized bilinearly to the image
    size and thresholded at 0.5 (``scale_masks``, as Ultralytics' plotting maps such masks). Chunks of instances
    keep memory bounded.

    Args:
        protos: (C, mh, mw) prototypes of one image (a tensor on the device).
        coeffs: (N, C) mask coefficients of the kept instances.
        boxes: (N, 4) xyxy boxes in model-input pixels.
        input_hw: model input (height, width).
        shape: original image (height, width).

    Returns:
        ``(masks, nonempty)``: (N, H, W) bool masks and (N,) bool, non-empty at the input size.
    """
    import torch
    import torch.nn.functional as F

    (h, w), (hi, wi) = shape, (int(input_hw[0]), int(input_hw[1]))
    c, mh, mw = protos.shape
    dev = protos.device
    n = int(coeffs.shape[0])
    out = torch.zeros((n, h, w), dtype=torch.bool, device=dev)
    nonempty = torch.zeros(n, dtype=torch.bool, device=dev)
    if not n:
        return out, nonempty
    gain = min(hi / h, wi / w)
    ch, cw = max(round(h * gain), 1), max(round(w * gain), 1)
    top, left = round((hi - ch) / 2 - 0.1), round((wi - cw) / 2 - 0.1)  # scale_masks' content window
    logits = (coeffs.float() @ protos.float().reshape(c, -1)).reshape(n, mh, mw)
    edges = torch.ceil(boxes.to(torch.float64))
    x1, x2 = edges[:, 0].clamp(0, wi).long(), edges[:, 2].clamp(0, wi).long()  # input columns x1 <= col < x2
    y1, y2 = edges[:, 1].clamp(0, hi).long(), edges[:, 3].clamp(0, hi).long()
    cols, rows = torch.arange(wi, device=dev), torch.arange(hi, device=dev)
    step = max(1, MASK_CHUNK_PIXELS // max(1, hi * wi + h * w))
    for s in range(0, n, step):
        e = min(n, s + step)
        up = F.interpolate(logits[None, s:e], size=(hi, wi), mode="bilinear", align_corners=False)[0] > 0
        up &= ((rows[None, :, None] >= y1[s:e, None, None]) & (rows[None, :, None] < y2[s:e, None, None])
               & (cols[None, None, :] >= x1[s:e, None, None]) & (cols[None, None, :] < x2[s:e, None, None]))
        nonempty[s:e] = up.flatten(1).any(1)
        content = up[None, :, top:top + ch, left:left + cw].float()
        out[s:e] = F.interpolate(content, size=(h, w), mode="bilinear", align_corners=False)[0] > 0.5
    return out, nonempty


def postprocess_segment(pred: Any, protos: Any, infos: Sequence[LetterboxInfo], o: PostprocessOptions, *,
                        names: dict[int, str], nc: int, ratio: int) -> list[Segmentations]:
    """(B, 4 + nc + nm, N) detections and (B, nm, mh, mw) prototypes on the device -> one result per image.

    ``o`` must be resolved (conf/iou/max_det set). Masks are assembled on the device, at the image size or, with
    ``o.retina_masks`` False, at the input size (``ratio`` times the prototypes') and then mapped onto the image.
    """
    import torch

    pred = pred[: len(infos)].float()
    nm = int(protos.shape[1])
    anchor, img, counts, boxes, score, cls = nms_batch(pred, infos, o, nc)
    coeffs = pred[img, 4 + nc : 4 + nc + nm, anchor] if len(img) else pred.new_zeros((0, nm))
    out, start = [], 0
    for i, (info, k) in enumerate(zip(infos, counts.tolist())):
        sl = slice(start, start + k)
        start += k
        if o.retina_masks:
            masks = assemble_masks_tensor(protos[i], coeffs[sl], boxes[sl], info.orig_shape, ratio)
            keep = masks.flatten(1).any(1) if k else masks.new_zeros(0)
        else:  # the boxes in input pixels, computed as nms_batch computes them before mapping them back
            cxcywh = pred[img[sl], :4, anchor[sl]]
            boxes_in = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
            input_hw = (ratio * int(protos.shape[2]), ratio * int(protos.shape[3]))
            masks, keep = assemble_masks_input_tensor(protos[i], coeffs[sl], boxes_in, input_hw, info.orig_shape)
        b = boxes[sl][keep].cpu().numpy()
        out.append(Segmentations(b, score[sl][keep].cpu().numpy(), cls[sl][keep].cpu().numpy().astype(np.int64),
                                 dict(names), info.orig_shape, masks=Masks(masks[keep].cpu().numpy())))
    return out


def postprocess_pose(pred: Any, infos: Sequence[LetterboxInfo], o: PostprocessOptions, *, names: dict[int, str],
                     nc: int, kpt_shape: tuple[int, int]) -> list[Poses]:
    """(B, 4 + nc + K*D, N) pose head output on the device -> one :class:`Poses` per image (keypoints in pixels)."""
    import torch

    pred = pred[: len(infos)].float()
    k, d = kpt_shape
    anchor, img, counts, boxes, score, cls = nms_batch(pred, infos, o, nc)
    kpts = pred[img, 4 + nc : 4 + nc + k * d, anchor].reshape(-1, k, d) if len(img) else pred.new_zeros((0, k, d))
    kpts = kpts.clone()
    if len(img):
        t = letterbox_table(infos, pred.device)[img]  # pad_x pad_y gain_x gain_y width height
        kpts[..., 0] = ((kpts[..., 0] - t[:, None, 0]) / t[:, None, 2]).clamp(min=0).minimum(t[:, None, 4])
        kpts[..., 1] = ((kpts[..., 1] - t[:, None, 1]) / t[:, None, 3]).clamp(min=0).minimum(t[:, None, 5])
    host = torch.cat([boxes, score[:, None], cls[:, None].float(), kpts.flatten(1)], 1).cpu().numpy()
    out, start = [], 0
    for info, n in zip(infos, counts.tolist()):
        r = host[start : start + n]
        start += n
        out.append(Poses(r[:, :4].copy(), r[:, 4].copy(), r[:, 5].astype(np.int64), dict(names), info.orig_shape,
                         keypoints=Keypoints(r[:, 6:].reshape(-1, k, d).copy())))
    return out
