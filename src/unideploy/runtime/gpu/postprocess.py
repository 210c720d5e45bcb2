"""YOLO postprocessing of a whole batch on the model's device, one device-to-host copy per batch.

Same rules as :class:`unideploy.runtime.families.yolo.YoloAdapter` (Ultralytics' ``non_max_suppression``): best class
per anchor, strict ``score > conf``, optional class filter, at most 30000 candidates per image into NMS,
class-aware NMS (one ``torchvision.ops.nms`` call for the batch: boxes offset per class in float32 exactly as
the CPU adapter does, and per image by an exact float64 shift; without torchvision, the package's numpy NMS
(:func:`unideploy.core.ops.nms.nms`) image by image), then ``max_det`` per image; boxes are mapped back through
each image's letterbox and clipped, still on the device. The kept rows of every image are packed into one tensor
(``counts | x1 y1 x2 y2 score class``) and copied to the host once.

Example:
    >>> opts = PostprocessOptions(conf=0.25, iou=0.7)
    >>> dets = postprocess_batch(pred, infos, opts, names={0: "person"})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.ops.nms import nms as np_nms
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Detections
from unideploy.runtime.families.yolo import MAX_NMS, MAX_WH, YoloAdapter

__all__ = ["IMAGE_GAP", "letterbox_table", "nms_batch", "postprocess_batch", "select_candidates"]

#: distance between images in the batched NMS (exact in float64 for any class offset below 2**26)
IMAGE_GAP = float(2**26)


def _sorted_nms(boxes: Any, img: Any, iou: float) -> Any:
    """Positions kept by NMS of score-sorted float32 ``boxes`` (class offsets added), image by image; ascending.

    One ``torchvision.ops.nms`` call for the batch, each image shifted ``IMAGE_GAP`` px away in float64 (exact),
    or, without torchvision (optional on CPU), :func:`unideploy.core.ops.nms.nms` on each image's float32 boxes,
    the CPU adapter's own coordinates.
    """
    import torch

    try:
        from torchvision.ops import nms
    except ImportError:
        nms = None
    if nms is not None:
        off = boxes.to(torch.float64) + (img.to(torch.float64) * IMAGE_GAP)[:, None]
        ranks = torch.arange(len(boxes), 0, -1, device=boxes.device, dtype=torch.float64)
        return nms(off, ranks, iou)  # score-descending, i.e. ascending positions
    b, im = boxes.cpu().numpy(), img.cpu().numpy()
    ranks = np.arange(len(b), 0, -1, dtype=np.float32)  # exact up to 2**24 candidates
    kept = [idx[np_nms(b[idx], ranks[idx], iou)] for idx in (np.flatnonzero(im == i) for i in np.unique(im))]
    keep = np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
    return torch.from_numpy(keep).to(boxes.device)


def select_candidates(pred: Any, conf: float, classes: Sequence[int] | None, nc: int) -> tuple[Any, Any, Any, Any]:
    """(image index, anchor index, score, class) of every anchor above ``conf`` in a (B, 4 + nc, N) batch."""
    import torch

    scores = pred[:, 4 : 4 + nc, :]
    best, cls = scores.max(1)  # (B, N)
    mask = best > conf
    if classes is not None:
        mask &= torch.isin(cls, torch.as_tensor(list(classes), device=cls.device))
    img, anchor = mask.nonzero(as_tuple=True)
    return img, anchor, best[img, anchor], cls[img, anchor]


def nms_batch(pred: Any, infos: Sequence[LetterboxInfo], o: PostprocessOptions, nc: int) -> tuple[Any, ...]:
    """Device NMS of a (B, C, N) YOLO head: what survives, grouped by image, score order kept within each.

    Returns:
        (anchor, img, counts, boxes, score, cls): kept anchor index and image index of each row, kept rows per image
        (B,), xyxy boxes mapped back through each image's letterbox and clipped, score and class — all on the device.
        Columns ``4 + nc`` onwards of ``pred`` (mask coefficients, keypoints) belong to ``pred[img, :, anchor]``.
    """
    import torch

    if o.multi_label:  # not silently ignored: the device NMS keeps the best class per box
        from unideploy.core.errors import OptionError

        raise OptionError("multi_label", "is not available on the GPU predictor (its NMS keeps the best class per "
                                         "box); use backend onnxruntime or openvino, or torch on the CPU")
    conf, iou, max_det, agnostic, classes = o.conf, o.iou, o.max_det, o.agnostic, o.classes
    dev = pred.device
    b = len(infos)
    img, anchor, score, cls = select_candidates(pred, conf, classes, nc)
    if not img.numel():
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return (empty, empty, torch.zeros(b, dtype=torch.int64, device=dev), torch.zeros((0, 4), device=dev),
                torch.zeros(0, device=dev), empty)
    counts = torch.bincount(img, minlength=b)
    if int(counts.max()) > MAX_NMS:  # rare: keep the MAX_NMS best of each image, as Ultralytics does
        keep = []
        for i in torch.nonzero(counts, as_tuple=True)[0].tolist():
            sel = torch.nonzero(img == i, as_tuple=True)[0]
            if sel.numel() > MAX_NMS:
                sel = sel[torch.argsort(score[sel], descending=True, stable=True)[:MAX_NMS]]
            keep.append(sel)
        sel = torch.cat(keep)
        img, anchor, score, cls = img[sel], anchor[sel], score[sel], cls[sel]
    box = pred[img, :4, anchor]  # cx, cy, w, h
    xyxy = torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], 1)
    # class offsets in float32 exactly as the CPU adapter (and Ultralytics) add them; then each image apart
    # (_sorted_nms): same-image IoUs see the CPU path's coordinates
    off = xyxy + (cls.to(torch.float32) * (0 if agnostic else MAX_WH))[:, None]
    order = torch.argsort(score, descending=True, stable=True)  # ties keep anchor order, as np.argsort(kind="stable")
    keep = order[_sorted_nms(off[order], img[order], iou)]  # score-descending
    k_img = img[keep]
    order = torch.argsort(k_img, stable=True)  # group by image, score order kept within each
    keep, k_img = keep[order], k_img[order]
    counts = torch.bincount(k_img, minlength=b)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(keep), device=dev) - starts[k_img]
    ok = rank < max_det
    keep, k_img = keep[ok], k_img[ok]
    counts = torch.bincount(k_img, minlength=b)
    boxes = xyxy[keep]
    pads = letterbox_table(infos, dev)[k_img]
    boxes[:, 0::2] = ((boxes[:, 0::2] - pads[:, 0:1]) / pads[:, 2:3]).clamp_(min=0).minimum(pads[:, 4:5])
    boxes[:, 1::2] = ((boxes[:, 1::2] - pads[:, 1:2]) / pads[:, 3:4]).clamp_(min=0).minimum(pads[:, 5:6])
    return anchor[keep], k_img, counts, boxes, score[keep], cls[keep]


def letterbox_table(infos: Sequence[LetterboxInfo], device: Any) -> Any:
    """(B, 6) float32 rows ``pad_x pad_y gain_x gain_y width height`` of each image's letterbox, on ``device``."""
    import torch

    return torch.tensor([[i.pad[0], i.pad[1], i.gain[0], i.gain[1], i.orig_shape[1], i.orig_shape[0]] for i in infos],
                        dtype=torch.float32, device=device)


def postprocess_batch(pred: Any, infos: Sequence[LetterboxInfo], options: PostprocessOptions | None = None, *,
                      names: dict[int, str] | None = None, nc: int | None = None) -> list[Detections]:
    """Raw YOLO head output (B, 4 + nc, N) on any device -> one :class:`Detections` per image.

    Args:
        pred: model output tensor (any float dtype; computed in float32).
        infos: the letterbox of each image (len B; extra rows of a padded batch are ignored).
        options: conf / iou / max_det / agnostic / classes; unset fields take the ``yolo`` family's defaults.
        names: class names for the results.
        nc: number of classes (default: ``pred.shape[1] - 4``).
    """
    import torch

    o = (options if options is not None else PostprocessOptions()).resolved(YoloAdapter.postprocess_defaults)
    pred = pred[: len(infos)].float()
    b = len(infos)
    _, k_img, counts, boxes, score, cls = nms_batch(pred, infos, o, nc or pred.shape[1] - 4)
    if len(k_img):
        packed = torch.cat([counts.float(), torch.cat([boxes, score[:, None], cls[:, None].float()], 1).flatten()])
    else:
        packed = torch.zeros(b, device=pred.device)
    host = packed.cpu().numpy()  # the one device-to-host copy of the batch
    counts_h = host[:b].astype(np.int64)
    rows = host[b:].reshape(-1, 6)
    out, start = [], 0
    for info, n in zip(infos, counts_h):
        r = rows[start : start + n]
        start += n
        out.append(Detections(r[:, :4].copy(), r[:, 4].copy(), r[:, 5].astype(np.int64), dict(names or {}), info.orig_shape))
    return out
