"""Preprocessing inside an OpenVINO model: ``openvino.preprocess.PrePostProcessor`` steps built from a spec.

The host then feeds the letterboxed image as it was decoded, uint8 NHWC BGR, and the compiled model does the rest
of :meth:`Adapter.to_tensor <unideploy.runtime.families.base.Adapter.to_tensor>`: uint8 -> f32, BGR -> RGB (when
the network wants RGB), NHWC -> NCHW, the division by ``1 / scale`` and ``(x - mean) / std``. The steps are the
same operations in the same order as the numpy path (a division, not a multiplication by the reciprocal), so the
network's input is the same up to the device's own arithmetic; ``tests/test_preprocess_in_model.py`` measures it.

Used at load (:meth:`OpenVINOSession.fuse_preprocess`, any IR or ONNX file, nothing re-exported) and by
``export --to openvino --in-model-preprocess``, which saves the steps into the IR and records ``in_model`` in the
embedded spec so a later load does not add them twice.
"""

from __future__ import annotations

from typing import Any

from unideploy.core.spec import ModelSpec
from unideploy.runtime.backends.in_model import in_model_spec as shared_in_model_spec

__all__ = ["fusable", "add_preprocessing", "in_model_spec"]

_FLOAT_TYPES = ("f32", "f16", "bf16")


def fusable(model: Any, spec: ModelSpec) -> str | None:
    """Why ``spec``'s preprocessing cannot go into ``model`` (an ``openvino.Model``), or None when it can.

    It can when the model has one 4-D float NCHW input with 3 channels, the spec describes that input (not already
    an in-model or uint8 input), and the spec's host preprocessing is the generic one (colour order, scale,
    mean/std).
    """
    if spec.in_model:
        return f"the model already does its preprocessing ({spec.in_model})"
    if len(model.inputs) != 1:
        return f"the model has {len(model.inputs)} inputs"
    port = model.inputs[0]
    pshape = port.get_partial_shape()
    if pshape.rank.is_dynamic or pshape.rank.get_length() != 4:
        return "its input is not a 4-D image batch"
    if port.get_element_type().get_type_name() not in _FLOAT_TYPES:
        return f"its input is {port.get_element_type().get_type_name()}, not float"
    c = pshape[1]
    if spec.layout != "nchw" or not c.is_static or c.get_length() != 3:
        return "its input is not NCHW with 3 channels"
    return None


def add_preprocessing(ov: Any, model: Any, spec: ModelSpec) -> Any:
    """``model`` with PrePostProcessor steps that take uint8 NHWC BGR and compute ``spec``'s network input.

    Args:
        ov: the ``openvino`` module.
        model: an ``openvino.Model`` that :func:`fusable` accepts.
        spec: the resolved spec (family defaults applied): ``channel_order``, ``scale``, ``mean``, ``std``.

    Returns:
        The built model (a new ``openvino.Model``).

    Example:
        >>> import openvino as ov  # doctest: +SKIP
        >>> m = add_preprocessing(ov, ov.Core().read_model("yolov8n.onnx"), spec)  # doctest: +SKIP
        >>> m.inputs[0].get_element_type().get_type_name(), str(m.inputs[0].get_partial_shape())  # doctest: +SKIP
        ('u8', '[1,640,640,3]')
    """
    from openvino.preprocess import ColorFormat, PrePostProcessor

    ppp = PrePostProcessor(model)
    inp = ppp.input(0)
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    inp.model().set_layout(ov.Layout("NCHW"))
    steps = inp.preprocess()
    steps.convert_element_type(ov.Type.f32)
    if spec.channel_order == "rgb":
        steps.convert_color(ColorFormat.RGB)
    if spec.scale and spec.scale != 1:
        steps.scale(float(1 / spec.scale))  # x / 255 as in Adapter._normalise (float32 division)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        steps.mean([float(m) for m in spec.mean])
        steps.scale([float(s) for s in spec.std])
    return ppp.build()


def in_model_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` for a model whose preprocessing runs inside it: uint8 NHWC BGR input, ``in_model="openvino"``
    (:func:`unideploy.runtime.backends.in_model.in_model_spec`, shared with Ascend AIPP and RKNN)."""
    return shared_in_model_spec(spec, "openvino", "bgr")
