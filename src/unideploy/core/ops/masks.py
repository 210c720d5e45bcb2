"""Instance masks in numpy: prototype assembly, COCO run-length encoding and polygons.

:func:`assemble_masks` reproduces Ultralytics' ``process_mask_native`` (the ``retina_masks=True`` path: masks at the
original image size). Ultralytics computes ``coeffs @ protos`` at prototype resolution, upsamples the logits by a
small factor (1, 2 or 4, bilinear), cuts away the letterbox padding, resizes the rest bilinearly to the image size,
thresholds at 0 and zeroes everything outside each box. Every one of those resamplings is linear, so their
composition is a pair of matrices ``Ay`` (image rows x prototype rows) and ``Ax`` (image columns x prototype columns)
and one mask is ``Ay[y1:y2] @ logits @ Ax[x1:x2].T`` evaluated only inside its box: the same values (up to float
rounding) at a fraction of the cost of upsampling every mask to the full image.

:func:`assemble_masks_input` is Ultralytics' default path (``retina_masks=False``): ``process_mask`` at the model
input size, then the 0/1 masks brought onto the image as Ultralytics' plotting does (``scale_masks``, > 0.5).

:func:`encode_rle` writes COCO's compressed RLE strings (the ``counts`` pycocotools' ``encode`` gives) without
pycocotools; :func:`mask_to_polygon` gives the outline Ultralytics writes to its ``.txt`` labels (``masks2segments``: all contours
joined into one).
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

__all__ = ["assemble_masks", "assemble_masks_input", "bilinear_matrix", "decode_rle", "encode_rle", "mask_to_polygon",
           "mask_iou", "merge_contours", "proto_resample_matrices"]


def _taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two source indices and the second one's weight of each output of a 1-D bilinear resampling with
    half-pixel centres (``align_corners=False``)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bilinear resampling with half-pixel centres (``align_corners=False``), the weights
    ``torch.nn.functional.interpolate(mode="bilinear")`` and OpenCV's ``INTER_LINEAR`` upsampling use.

    Example:
        >>> bilinear_matrix(4, 2).round(2).tolist()
        [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    """
    i0, i1, w1 = _taps(n_out, n_in)
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


def _resample(n_out: int, src: np.ndarray) -> np.ndarray:
    """``bilinear_matrix(n_out, len(src)) @ src``, computed from the two taps of each row (no dense product)."""
    i0, i1, w1 = _taps(n_out, len(src))
    return (1.0 - w1)[:, None] * src[i0] + w1[:, None] * src[i1]


@lru_cache(maxsize=32)
def proto_resample_matrices(proto_hw: tuple[int, int], shape: tuple[int, int],
                            ratio: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(Ay, Ax): prototype grid -> original image rows/columns, as Ultralytics' ``process_mask_native`` maps them.

    Cached by size (the arrays are read-only): a video or a folder of same-sized images builds them once.

    Args:
        proto_hw: prototype (height, width); the model input is ``ratio`` times larger.
        shape: original image (height, width).
        ratio: model input size / prototype size (4 for YOLOv8/11 and YOLOv5 heads).
    """
    mh, mw = proto_hw
    h, w = shape
    gain = min(ratio * mh / h, ratio * mw / w)
    pad = (ratio * mh - max(round(h * gain), 1)) | (ratio * mw - max(round(w * gain), 1))
    f = ratio // math.gcd(ratio, pad | pad // 2)  # the upsampling that puts the padding on whole pixels
    uh, uw = f * mh, f * mw
    up_y, up_x = bilinear_matrix(uh, mh), bilinear_matrix(uw, mw)
    if (uh, uw) == (h, w):
        ay, ax = up_y, up_x
    else:
        g = min(uh / h, uw / w)
        pad_w, pad_h = (uw - max(round(w * g), 1)) / 2, (uh - max(round(h * g), 1)) / 2
        top, left = round(pad_h - 0.1), round(pad_w - 0.1)
        bottom, right = top + max(round(h * g), 1), left + max(round(w * g), 1)
        ay, ax = _resample(h, up_y[top:bottom]), _resample(w, up_x[left:right])
    ay, ax = ay.astype(np.float32), ax.astype(np.float32)
    ay.flags.writeable = ax.flags.writeable = False
    return ay, ax


@lru_cache(maxsize=32)
def _banded(proto_hw: tuple[int, int], shape: tuple[int, int], ratio: int) -> tuple[np.ndarray, ...]:
    """(Ay, Ax) as bands: for each image row/column the first prototype index and the K weights from there on
    (every row of those matrices has at most a few neighbouring non-zeros: two bilinear resamplings composed)."""
    out = []
    for m in proto_resample_matrices(proto_hw, shape, ratio):
        nz = m != 0
        first = np.where(nz.any(1), nz.argmax(1), 0)
        last = np.where(nz.any(1), m.shape[1] - 1 - nz[:, ::-1].argmax(1), 0)
        k = int((last - first).max()) + 1
        idx = first[:, None] + np.arange(k)
        valid = idx < m.shape[1]
        idx = np.minimum(idx, m.shape[1] - 1)
        weights = np.where(valid, np.take_along_axis(m, idx, 1), 0).astype(np.float32)
        out += [idx, weights]
    return tuple(out)


def assemble_masks(protos: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray, shape: tuple[int, int],
                   ratio: int = 4) -> np.ndarray:
    """Instance masks (N, H, W) bool at the original image size, as Ultralytics' ``process_mask_native``.

    Each mask is ``Ay[y1:y2] @ logits @ Ax[x1:x2].T`` inside its box only; the two products are taken from the
    matrices' bands (a few taps per pixel, like the interpolations they stand for), not as dense products.

    Args:
        protos: (C, mh, mw) prototypes of one image.
        coeffs: (N, C) mask coefficients of the kept boxes.
        boxes: (N, 4) xyxy boxes in original image pixels (already mapped back through the letterbox and clipped).
        shape: original image (height, width).
        ratio: model input size / prototype size.

    Returns:
        (N, H, W) bool: logit > 0 inside the box (pixel column ``c`` is inside when ``x1 <= c < x2``), False outside.

    Example:
        >>> import numpy as np
        >>> m = assemble_masks(np.ones((1, 8, 8), np.float32), np.ones((1, 1), np.float32),
        ...                    np.array([[2, 2, 10.5, 6]], np.float32), (32, 32))
        >>> m.shape, int(m.sum()), bool(m[0, 2, 2]), bool(m[0, 6, 2])
        ((1, 32, 32), 36, True, False)
    """
    h, w = shape
    protos = np.asarray(protos, np.float32)
    c, mh, mw = protos.shape
    coeffs = np.asarray(coeffs, np.float32).reshape(-1, c)
    out = np.zeros((len(coeffs), h, w), bool)
    if not len(coeffs):
        return out
    iy, wy, ix, wx = _banded((int(mh), int(mw)), (int(h), int(w)), int(ratio))
    logits = (coeffs @ protos.reshape(c, -1)).reshape(-1, mh, mw)
    b = np.asarray(boxes, np.float64)
    x1 = np.clip(np.ceil(b[:, 0]), 0, w).astype(np.int64)  # columns c with x1 <= c < x2
    x2 = np.clip(np.ceil(b[:, 2]), 0, w).astype(np.int64)
    y1 = np.clip(np.ceil(b[:, 1]), 0, h).astype(np.int64)
    y2 = np.clip(np.ceil(b[:, 3]), 0, h).astype(np.int64)
    for i in range(len(coeffs)):
        if x2[i] > x1[i] and y2[i] > y1[i]:
            cx, cy = slice(x1[i], x2[i]), slice(y1[i], y2[i])
            jx, vx, jy, vy = ix[cx], wx[cx], iy[cy], wy[cy]
            cols = logits[i][:, jx[:, 0]] * vx[:, 0]  # (mh, box width): the columns resampled, tap by tap
            for k in range(1, jx.shape[1]):
                cols += logits[i][:, jx[:, k]] * vx[:, k]
            full = cols[jy[:, 0]] * vy[:, 0, None]  # (box height, box width): then the rows
            for k in range(1, jy.shape[1]):
                full += cols[jy[:, k]] * vy[:, k, None]
            out[i, cy, cx] = full > 0
    return out


def _taps32(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_taps` in float32 arithmetic, as ``torch.nn.functional.interpolate(mode="bilinear")`` computes them on
    CPU (scale ``n_in / n_out``, source position, weights): the two indices and both weights of each output."""
    f = np.float32
    scale = f(n_in) / f(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=f) + f(0.5)) - f(0.5), f(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    w1 = (src - i0.astype(f)).astype(f)
    return i0, np.minimum(i0 + 1, n_in - 1), f(1) - w1, w1


@lru_cache(maxsize=32)
def _input_taps(proto_hw: tuple[int, int], input_hw: tuple[int, int],
                shape: tuple[int, int]) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The 1-D resamplings of :func:`assemble_masks_input`, per axis (rows, then columns).

    Each axis is ``(p0, p1, pv, pw, q0, q1, qv, qw)``: the prototype taps of every model-input line (bilinear
    upsampling to the input size) and the input taps of every image line (the letterbox content ``[top, bottom)`` cut
    out and resized bilinearly to the image size, as Ultralytics' ``scale_masks`` with no ``ratio_pad``), each as two
    indices and their two weights.
    """
    (mh, mw), (hi, wi), (h, w) = proto_hw, input_hw, shape
    gain = min(hi / h, wi / w)
    axes = []
    for n_proto, n_in, n_img in ((mh, hi, h), (mw, wi, w)):
        content = max(round(n_img * gain), 1)
        start = round((n_in - content) / 2 - 0.1)  # top / left of the content, as scale_masks rounds it
        p0, p1, pv, pw = _taps32(n_in, n_proto)
        q0, q1, qv, qw = _taps32(n_img, content)
        axes.append((p0, p1, pv, pw, q0 + start, q1 + start, qv, qw))
    for arr in axes[0] + axes[1]:
        arr.flags.writeable = False  # cached and shared
    return axes[0], axes[1]


def _lerp(a: np.ndarray, b: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``v * a + w * b`` (``v = 1 - w``), the one-axis bilinear blend of two taps, in place in ``a`` and ``b`` (fresh
    gathers)."""
    a *= v
    b *= w
    a += b
    return a


def assemble_masks_input(protos: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray, input_hw: tuple[int, int],
                         shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Instance masks of Ultralytics' default path (``retina_masks=False``), brought to the original image size.

    First Ultralytics' ``process_mask(..., upsample=True)``: ``coeffs @ protos`` upsampled bilinearly to the model
    input size, thresholded at 0 (sigmoid 0.5) and cut to each box in input pixels (``x1 <= column < x2``). Then,
    as Ultralytics' plotting (``Annotator.masks``) and FastSAM map such masks onto the image: the letterbox content
    cut out, the 0/1 mask resized bilinearly to the image size (``scale_masks``) and thresholded at 0.5. Both
    resamplings are done inside each box only, from their two taps per axis (no full-size intermediate).

    Args:
        protos: (C, mh, mw) prototypes of one image.
        coeffs: (N, C) mask coefficients of the kept boxes.
        boxes: (N, 4) xyxy boxes in model-input pixels (before the letterbox is undone; not clipped).
        input_hw: model input (height, width) the image was letterboxed into (centred, Ultralytics' rounding).
        shape: original image (height, width).

    Returns:
        ``(masks, nonempty)``: (N, H, W) bool masks at the image size, and (N,) bool telling which instances have a
        non-empty mask at the input size (the ones Ultralytics keeps; a kept mask can still vanish at a smaller
        image size).

    Example:
        >>> import numpy as np
        >>> m, keep = assemble_masks_input(np.ones((1, 8, 8), np.float32), np.ones((1, 1), np.float32),
        ...                                np.array([[8, 8, 24, 16]], np.float32), (32, 32), (64, 64))
        >>> m.shape, int(m.sum()), keep.tolist()
        ((1, 64, 64), 512, [True])
    """
    h, w = shape
    hi, wi = int(input_hw[0]), int(input_hw[1])
    protos = np.asarray(protos, np.float32)
    c, mh, mw = protos.shape
    coeffs = np.asarray(coeffs, np.float32).reshape(-1, c)
    out = np.zeros((len(coeffs), h, w), bool)
    nonempty = np.zeros(len(coeffs), bool)
    if not len(coeffs):
        return out, nonempty
    (py0, py1, pyv, pyw, qy0, qy1, qyv, qyw), (px0, px1, pxv, pxw, qx0, qx1, qxv, qxw) = _input_taps(
        (int(mh), int(mw)), (hi, wi), (int(h), int(w)))
    logits = (coeffs @ protos.reshape(c, -1)).reshape(-1, mh, mw)
    edges = np.ceil(np.asarray(boxes, np.float64))  # input lines l with x1 <= l < x2 (crop_mask)
    x1, x2 = np.clip(edges[:, 0], 0, wi).astype(np.int64), np.clip(edges[:, 2], 0, wi).astype(np.int64)
    y1, y2 = np.clip(edges[:, 1], 0, hi).astype(np.int64), np.clip(edges[:, 3], 0, hi).astype(np.int64)
    # image rows (columns) whose two input taps reach into the box's [y1, y2) ([x1, x2)): the taps never decrease,
    # so a contiguous range
    r1, r2 = np.searchsorted(qy1, y1), np.searchsorted(qy0, y2)
    c1, c2 = np.searchsorted(qx1, x1), np.searchsorted(qx0, x2)
    for i in range(len(coeffs)):
        if x2[i] <= x1[i] or y2[i] <= y1[i]:
            continue
        sx, sy = slice(x1[i], x2[i]), slice(y1[i], y2[i])
        cols = _lerp(logits[i][:, px0[sx]], logits[i][:, px1[sx]], pxv[sx], pxw[sx])  # (mh, box width)
        inp = _lerp(cols[py0[sy]], cols[py1[sy]], pyv[sy, None], pyw[sy, None]) > 0  # the box at the input size
        if not inp.any():
            continue
        nonempty[i] = True
        if r2[i] <= r1[i] or c2[i] <= c1[i]:
            continue
        padded = np.zeros((inp.shape[0] + 2, inp.shape[1] + 2), np.float32)  # zero around the box: outside it
        padded[1:-1, 1:-1] = inp
        tx, ty = slice(c1[i], c2[i]), slice(r1[i], r2[i])
        jx0 = np.clip(qx0[tx] - x1[i], -1, inp.shape[1]) + 1
        jx1 = np.clip(qx1[tx] - x1[i], -1, inp.shape[1]) + 1
        jy0 = np.clip(qy0[ty] - y1[i], -1, inp.shape[0]) + 1
        jy1 = np.clip(qy1[ty] - y1[i], -1, inp.shape[0]) + 1
        cols = _lerp(padded[:, jx0], padded[:, jx1], qxv[tx], qxw[tx])
        out[i, ty, tx] = _lerp(cols[jy0], cols[jy1], qyv[ty, None], qyw[ty, None]) > 0.5
    return out, nonempty


def _runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a (H, W) mask in column-major order, starting with a run of zeros (COCO's convention)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    if not flat.size:
        return np.zeros(0, np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(edges)
    return np.concatenate(([0], counts)) if flat[0] else counts


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of one (H, W) mask: ``{"size": [H, W], "counts": str}``, as ``pycocotools.mask.encode``.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((4, 4), bool); m[1:3, 1:3] = True
        >>> encode_rle(m)
        {'size': [4, 4], 'counts': '52203'}
    """
    h, w = mask.shape
    counts = _runs(mask).tolist()
    chars = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [int(h), int(w)], "counts": "".join(chars)}


def decode_rle(rle: dict) -> np.ndarray:
    """The (H, W) bool mask of a COCO compressed RLE (the inverse of :func:`encode_rle`)."""
    h, w = rle["size"]
    s = rle["counts"]
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts cover {flat.size} pixels, expected {h} x {w} = {h * w}")
    return flat.reshape((w, h)).T


def _closest_pair(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Indices (i, j) of the closest points a[i], b[j] of two (K, 2) outlines."""
    d = ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return int(i), int(j)


def merge_contours(contours: list[np.ndarray]) -> np.ndarray:
    """One outline (K, 2) through several (K_i, 2) outlines, joined where consecutive ones come closest.

    The path Ultralytics' ``merge_multi_segment`` draws: each outline is entered at its point closest to the
    previous outline and left at its point closest to the next; the path goes forward through every outline (the
    first and last whole, each middle one from its entry to its exit point) and then back through the middle
    outlines' remaining arcs, so the joins are thin there-and-back lines.

    Example:
        >>> a = np.array([[0, 0], [2, 0], [2, 2], [0, 2]]); b = a + [5, 0]
        >>> merge_contours([a, b]).tolist()
        [[2, 0], [2, 2], [0, 2], [0, 0], [2, 0], [5, 0], [7, 0], [7, 2], [5, 2], [5, 0]]
    """
    segs = [np.asarray(c).reshape(-1, 2) for c in contours]
    n = len(segs)
    if n == 1:
        return segs[0]
    ends: list[list[int]] = [[] for _ in range(n)]  # middle outlines: [entry, exit]; the first/last: one index
    for i in range(1, n):
        a, b = _closest_pair(segs[i - 1], segs[i])
        ends[i - 1].append(a)
        ends[i].append(b)
    forward = []
    for i, idx in enumerate(ends):
        if len(idx) == 2 and idx[0] > idx[1]:  # walk it the other way so that entry comes before exit
            idx = ends[i] = [len(segs[i]) - 1 - x for x in idx]
            segs[i] = segs[i][::-1]
        seg = np.roll(segs[i], -idx[0], axis=0)
        segs[i] = np.concatenate([seg, seg[:1]])  # closed, starting at its entry point
        forward.append(segs[i] if i in (0, n - 1) else segs[i][: idx[1] - idx[0] + 1])
    back = [segs[i][abs(ends[i][1] - ends[i][0]):] for i in range(n - 2, 0, -1)]
    return np.concatenate(forward + back)


def mask_to_polygon(mask: np.ndarray, strategy: str = "all") -> np.ndarray:
    """The outline (K, 2) float32 of a (H, W) mask ((0, 2) when empty), as Ultralytics' ``masks2segments``.

    Args:
        mask: (H, W) mask.
        strategy: "all" joins every external contour into one outline (:func:`merge_contours`, Ultralytics' default
            for its ``.txt`` labels); "largest" keeps the contour with the most points.
    """
    if strategy not in ("all", "largest"):
        raise ValueError(f"strategy must be 'all' or 'largest', got {strategy!r}")
    contours = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return np.zeros((0, 2), np.float32)
    if strategy == "largest" or len(contours) == 1:
        return max(contours, key=len).reshape(-1, 2).astype(np.float32)
    return merge_contours([c.reshape(-1, 2) for c in contours]).astype(np.float32)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of two stacks of (H, W) masks of one image."""
    fa = np.asarray(a, bool).reshape(len(a), -1).astype(np.float32)
    fb = np.asarray(b, bool).reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)
