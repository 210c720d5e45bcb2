"""The AIPP part of the test doubles: parse and check an ATC ``--insert_op_conf`` file, and apply it to uint8 images.

Checked as the ATC AIPP configuration template documents it: a prototxt with ``aipp_op { ... }`` blocks of
``name : value`` lines; only the documented field names; ``aipp_mode`` (static or dynamic) always, and
``input_format`` (one of the documented formats) for static AIPP; booleans ``true``/``false``; every number within
its documented range (``src_image_size_*`` [0, 4096], ``mean_chn_*`` integers [0, 255], ``min_chn_*`` [0, 255],
``var_reci_chn_*`` [-65504, 65504], ``matrix_r*c*`` [-32677, 32676], ``*_bias_*`` [0, 255], padding [0, 32]).
A field given twice, a malformed line or a value of the wrong type is an error, as ATC reports one.

Applied (the part unideploy uses, static AIPP on ``RGB888_U8`` without colour-space conversion, crop, resize,
padding or rotation; anything else is refused as "not emulated"), in the hardware's documented order: R/B swap
(``rbuv_swap_switch``), then per output channel ``(x - mean_chn_i - min_chn_i) * var_reci_chn_i``, with
``min_chn``/``var_reci_chn`` rounded to float16 as the AIPP unit holds them (their documented range, ±65504, is
float16's). The result is the float32 NCHW tensor the network then receives.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = {"YUV420SP_U8", "XRGB8888_U8", "RGB888_U8", "YUV400_U8", "ARGB8888_U8", "YUYV_U8", "YUV422SP_U8",
           "AYUV444_U8", "RAW10", "RAW12", "RAW16", "RAW24"}
BOOLS = {"crop", "resize", "padding", "csc_switch", "rbuv_swap_switch", "ax_swap_switch", "single_line_mode",
         "support_rotation"}
#: integer fields and their documented ranges
INTS: dict[str, tuple[int, int]] = {
    "related_input_rank": (0, 31), "input_edge_idx": (0, 2**31 - 1), "max_src_image_size": (0, 2**31 - 1),
    "src_image_size_w": (0, 4096), "src_image_size_h": (0, 4096), "load_start_pos_w": (0, 4095),
    "load_start_pos_h": (0, 4095), "crop_size_w": (0, 4096), "crop_size_h": (0, 4096),
    "resize_output_w": (16, 1920), "resize_output_h": (16, 4096), "left_padding_size": (0, 32),
    "right_padding_size": (0, 32), "top_padding_size": (0, 32), "bottom_padding_size": (0, 32),
    "rotation_angle": (0, 270),
    **{f"matrix_r{r}c{c}": (-32677, 32676) for r in range(3) for c in range(3)},
    **{f"{k}_bias_{i}": (0, 255) for k in ("input", "output") for i in range(3)},
    **{f"mean_chn_{i}": (0, 255) for i in range(4)},
}
FLOATS: dict[str, tuple[float, float]] = {
    **{f"min_chn_{i}": (0.0, 255.0) for i in range(4)},
    **{f"var_reci_chn_{i}": (-65504.0, 65504.0) for i in range(4)},
    "padding_value": (-65504.0, 65504.0),
}
KNOWN = {"aipp_mode", "input_format"} | BOOLS | set(INTS) | set(FLOATS)
_LINE = re.compile(r"^([a-z_0-9]+)\s*:\s*(\S+)$")


class AippError(Exception):
    """The config is not one ATC accepts (the message says why, like ATC's)."""


def parse_aipp(text: str) -> list[dict[str, Any]]:
    """The ``aipp_op`` blocks of an AIPP config, each as {field: typed value}; AippError on anything ATC rejects."""
    ops: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if re.fullmatch(r"aipp_op\s*\{", line):
            if cur is not None:
                raise AippError(f"line {n}: aipp_op blocks cannot nest")
            cur = {}
            continue
        if line == "}":
            if cur is None:
                raise AippError(f"line {n}: '}}' without an open aipp_op block")
            ops.append(_check(cur))
            cur = None
            continue
        m = _LINE.match(line)
        if cur is None or not m:
            raise AippError(f"line {n}: expected 'name : value' inside an aipp_op block, got {raw.strip()!r}")
        name, value = m.group(1), m.group(2)
        if name not in KNOWN:
            raise AippError(f"line {n}: unknown AIPP field {name!r}")
        if name in cur:
            raise AippError(f"line {n}: AIPP field {name!r} given twice")
        cur[name] = _value(name, value, n)
    if cur is not None:
        raise AippError("the last aipp_op block is not closed")
    if not ops:
        raise AippError("no aipp_op block")
    return ops


def _value(name: str, value: str, n: int) -> Any:
    if name == "aipp_mode":
        if value not in ("static", "dynamic"):
            raise AippError(f"line {n}: aipp_mode must be static or dynamic, got {value!r}")
        return value
    if name == "input_format":
        if value not in FORMATS:
            raise AippError(f"line {n}: input_format {value!r} is not one of {sorted(FORMATS)}")
        return value
    if name in BOOLS:
        if value not in ("true", "false"):
            raise AippError(f"line {n}: {name} must be true or false, got {value!r}")
        return value == "true"
    if name in INTS:
        if not re.fullmatch(r"-?\d+", value):
            raise AippError(f"line {n}: {name} must be an integer, got {value!r}")
        lo, hi = INTS[name]
        v = int(value)
    else:
        try:
            v = float(value)  # type: ignore[assignment]
        except ValueError:
            raise AippError(f"line {n}: {name} must be a number, got {value!r}") from None
        lo, hi = FLOATS[name]  # type: ignore[assignment]
    if not lo <= v <= hi:
        raise AippError(f"line {n}: {name} = {value} is outside its range [{lo}, {hi}]")
    return v


def _check(op: dict[str, Any]) -> dict[str, Any]:
    if "aipp_mode" not in op:
        raise AippError("aipp_mode is required in every aipp_op block")
    if op["aipp_mode"] == "static" and "input_format" not in op:
        raise AippError("input_format is required for static AIPP")
    if op.get("input_format") == "YUV420SP_U8" and any(op.get(k, 0) % 2 for k in ("src_image_size_w", "src_image_size_h")):
        raise AippError("src_image_size_w/h must be even for YUV420SP_U8")
    return op


def load_aipp(path: str | Path, input_shape: list[int]) -> dict[str, Any]:
    """The one static RGB888_U8 aipp_op this double applies, checked against the model input (N, 3, H, W)."""
    ops = parse_aipp(Path(path).read_text())
    if len(ops) != 1 or ops[0].get("related_input_rank", 0) != 0:
        raise AippError("this double applies one aipp_op on input 0")
    op = ops[0]
    unsupported = [k for k in ("crop", "resize", "padding", "csc_switch", "ax_swap_switch", "single_line_mode") if op.get(k)]
    if op["aipp_mode"] != "static" or op.get("input_format") != "RGB888_U8" or unsupported or op.get("rotation_angle", 0):
        raise AippError(f"not emulated by this test double: {op.get('aipp_mode')} AIPP, {op.get('input_format')}, "
                        f"{unsupported or 'rotation'}")
    h, w = input_shape[2], input_shape[3]
    for key, want in (("src_image_size_w", w), ("src_image_size_h", h)):
        if op.get(key, 0) not in (0, want):
            raise AippError(f"{key} = {op[key]} does not match the model input ({want})")
    return op


def apply_aipp(op: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """uint8 NHWC (N, H, W, 3) -> the float32 NCHW tensor AIPP hands the network."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise AippError(f"RGB888_U8 AIPP input must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    if op.get("rbuv_swap_switch"):
        x = x[..., ::-1]
    y = x.astype(np.float32).transpose(0, 3, 1, 2).copy()
    for c in range(3):
        sub = np.float32(op.get(f"mean_chn_{c}", 0)) + np.float32(np.float16(op.get(f"min_chn_{c}", 0.0)))
        y[:, c] -= sub
        y[:, c] *= np.float32(np.float16(op.get(f"var_reci_chn_{c}", 1.0)))
    return y
