"""Preprocessing in the model: one spec, three runtimes (OpenVINO PrePostProcessor, Ascend AIPP, RKNN).

The host's work after the resize (uint8 -> float, colour order, ``scale``, ``mean``/``std``, NCHW layout) can run
inside the compiled model on three runtimes. All three are described by the same spec fields
(:class:`~unideploy.core.spec.ModelSpec`): ``in_model`` names who does it ("openvino", "aipp", "rknn"),
``in_model_order`` the channel order of the uint8 NHWC image the model takes ("bgr": the decoded image as is),
``layout="nhwc"`` and ``input_dtype="uint8"``; ``channel_order``/``scale``/``mean``/``std`` keep describing what the
network computes. The adapter then takes one code path for all three
(:meth:`~unideploy.runtime.families.base.Adapter.to_batch`: one copy of the letterboxed uint8 images, no float
work on the host).

* OpenVINO: :mod:`unideploy.runtime.backends.openvino_ppp` (at load, or saved in the IR by ``export --to openvino
  --option in_model_preprocess=true``); input BGR, the model flips to RGB.
* Ascend: ``export --to om --option aipp=true`` writes a static AIPP config (:func:`aipp_fields`,
  :func:`aipp_config`) for ATC's ``--insert_op_conf``: input ``RGB888_U8`` fed BGR with ``rbuv_swap_switch`` for an
  RGB network, then ``(x - mean_chn - min_chn) * var_reci_chn`` per channel.
* RKNN: ``export --to rknn`` bakes ``mean_values``/``std_values`` in (:func:`rknn_mean_std`); the model takes the
  network's own channel order.

Example:
    >>> from unideploy.core.spec import ModelSpec
    >>> s = in_model_spec(ModelSpec(imgsz=(320, 320)), "aipp")
    >>> s.in_model, s.in_model_order, s.layout, s.input_dtype
    ('aipp', 'bgr', 'nhwc', 'uint8')
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from unideploy.core.spec import ModelSpec

__all__ = ["aipp_config", "aipp_fields", "in_model_spec", "network_spec", "rknn_mean_std"]


def in_model_spec(spec: ModelSpec, where: str, order: str = "bgr") -> ModelSpec:
    """``spec`` for a model whose preprocessing after the resize runs inside it (``where``: openvino, aipp, rknn):
    uint8 NHWC input in channel ``order``; the normalisation fields stay as the network computes them."""
    return replace(spec, in_model=where, in_model_order=order, layout="nhwc", input_dtype="uint8")


def network_spec(onnx_path: Any, spec: ModelSpec) -> ModelSpec:
    """``spec`` with the model family's preprocessing filled in (colour order, scale, mean/std: what the network
    computes), the family recognised from the ONNX model's outputs where the spec does not name it; the generic
    adapter's (RGB, x / 255) when no family recognises it. What an exporter bakes into the model."""
    import numpy as np
    import onnx

    from unideploy.core.errors import ModelError
    from unideploy.runtime.backends.base import TensorInfo
    from unideploy.runtime.families import resolve_adapter
    from unideploy.runtime.families.base import Adapter

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    outs = [TensorInfo(o.name, tuple(d.dim_value if d.HasField("dim_value") else None
                                     for d in o.type.tensor_type.shape.dim), np.dtype(np.float32)) for o in graph.output]
    try:
        cls = resolve_adapter(spec, outs)
    except ModelError:
        cls = Adapter
    return cls.default_spec(spec)


def _factors(spec: ModelSpec) -> tuple[list[float], list[float]]:
    """Per channel (network order): the value subtracted from the uint8 pixel, and the factor applied after,
    so that ``(x - sub) * mul == (x * scale - mean) / std``."""
    s = float(spec.scale or 1.0)
    return [m / s for m in spec.mean], [s / v for v in spec.std]


def aipp_fields(spec: ModelSpec, height: int, width: int) -> dict[str, Any]:
    """Static AIPP settings (ATC's ``aipp_op`` field names) that turn the letterboxed uint8 BGR image into
    ``spec``'s float network input.

    ``input_format: RGB888_U8`` with ``rbuv_swap_switch`` on when the network wants RGB (the host feeds the
    decoded BGR image); no colour-space conversion, crop or padding (the host letterboxes). AIPP computes
    ``(x - mean_chn_i - min_chn_i) * var_reci_chn_i``: the subtrahend ``mean / scale`` is split into its integer
    part (``mean_chn``, uint8) and the rest (``min_chn``), and ``var_reci_chn = scale / std``.

    Example:
        >>> f = aipp_fields(ModelSpec(imgsz=(320, 320)), 320, 320)
        >>> f["rbuv_swap_switch"], f["mean_chn_0"], round(f["var_reci_chn_0"], 8)
        (True, 0, 0.00392157)
    """
    sub, mul = _factors(spec)
    fields: dict[str, Any] = {"aipp_mode": "static", "related_input_rank": 0, "input_format": "RGB888_U8",
                              "src_image_size_w": int(width), "src_image_size_h": int(height), "csc_switch": False,
                              "rbuv_swap_switch": spec.channel_order == "rgb"}
    for i, (a, b) in enumerate(zip(sub, mul)):
        whole = min(max(int(math.floor(a)), 0), 255)
        fields[f"mean_chn_{i}"] = whole
        fields[f"min_chn_{i}"] = float(a - whole)
        fields[f"var_reci_chn_{i}"] = float(b)
    return fields


def aipp_config(fields: dict[str, Any]) -> str:
    """The AIPP config file ATC reads with ``--insert_op_conf`` (prototxt: one ``aipp_op { key : value }`` block).

    Example:
        >>> print(aipp_config({"aipp_mode": "static", "csc_switch": False}))
        aipp_op {
            aipp_mode : static
            csc_switch : false
        }
    """
    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(float(v)) if isinstance(v, float) else str(v)

    return "aipp_op {\n" + "".join(f"    {k} : {text(v)}\n" for k, v in fields.items()) + "}"


def rknn_mean_std(spec: ModelSpec) -> tuple[list[list[float]], list[list[float]]]:
    """rknn-toolkit2 ``config(mean_values, std_values)`` on the uint8 scale: the model computes ``(x - mean) / std``,
    equal to ``(x * scale - spec.mean) / spec.std``.

    Example:
        >>> rknn_mean_std(ModelSpec())
        ([[0.0, 0.0, 0.0]], [[255.0, 255.0, 255.0]])
    """
    s = float(spec.scale or 1.0)
    return [[round(m / s, 6) for m in spec.mean]], [[round(v / s, 6) for v in spec.std]]
