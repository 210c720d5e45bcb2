"""Which layers stay in floating point: the box-decoding tail of detection heads, plus user patterns.

An Ultralytics detection head ends with arithmetic on pixel coordinates (DFL softmax + 1x1 conv, anchor
add/subtract, stride multiply) and the class sigmoid. INT8 there costs accuracy and gains no speed, so
the head's nodes are kept in float except its learned convolution branches (``cv2``/``cv3``/``cv4`` and
the ``one2one_`` copies), which carry almost all of its compute. Ultralytics' own OpenVINO INT8 export
keeps the same part in float.
"""

from __future__ import annotations

import re
from typing import Iterable

_MODULE = re.compile(r"^/?model\.(\d+)/")


def ultralytics_head_patterns(node_names: Iterable[str]) -> list[str]:
    """Regexes (``re.match``) for the nodes of the last Ultralytics module except its conv branches.

    Returns [] when the names do not look like an Ultralytics export.

    Example:
        >>> ultralytics_head_patterns(["/model.0/conv/Conv", "/model.22/dfl/conv/Conv", "/model.22/cv2.0/Conv"])
        ['^/?model\\\\.22/(?!(?:one2one_)?cv[234][./])']
    """
    idx = [int(m.group(1)) for n in node_names if (m := _MODULE.match(n))]
    if not idx:
        return []
    head = max(idx)
    return [rf"^/?model\.{head}/(?!(?:one2one_)?cv[234][./])"]


def matching(node_names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The names matched (``re.match``) by any of ``patterns``, in input order."""
    compiled = [re.compile(p) for p in patterns]
    return [n for n in node_names if any(c.match(n) for c in compiled)]


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """Compile-check user patterns.

    Raises:
        InputError: a pattern is not a valid regular expression.
    """
    from unideploy.core.errors import InputError

    out = []
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise InputError(f"--ignore expects a regular expression over node names, got {p!r} ({e})") from None
        out.append(p)
    return out


#: layers with learned weights worth running in INT8 (ONNX op types / OpenVINO op types)
_HEAVY = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Convolution", "GroupConvolution", "ConvolutionBackpropData"}


def _tail(nodes: list[tuple[str, str, list[str]]]) -> list[str]:
    """Names of nodes from which no heavy layer can be reached; ``nodes`` = (name, type, consumer names),
    topologically sorted."""
    reach: dict[str, bool] = {}
    for name, kind, consumers in reversed(nodes):
        reach[name] = kind in _HEAVY or any(reach.get(c, False) for c in consumers)
    return [name for name, kind, _ in nodes if not reach[name] and kind not in ("Constant", "Parameter", "Result")]


def tail_nodes_onnx(model: object) -> list[str]:
    """Nodes of an ``onnx.ModelProto`` after its last Conv/MatMul/Gemm on every path (the decoding tail)."""
    graph = model.graph  # type: ignore[attr-defined]
    users: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n.name)
    return _tail([(n.name, n.op_type, [u for o in n.output for u in users.get(o, [])]) for n in graph.node])


def tail_nodes_openvino(model: object) -> list[str]:
    """Ops of an ``openvino.Model`` after its last convolution/MatMul on every path (the decoding tail)."""
    nodes = []
    for op in model.get_ordered_ops():  # type: ignore[attr-defined]
        consumers = [t.get_node().get_friendly_name() for out in op.outputs() for t in out.get_target_inputs()]
        nodes.append((op.get_friendly_name(), op.get_type_name(), consumers))
    return _tail(nodes)


def _names(model: object) -> list[str]:
    if hasattr(model, "get_ordered_ops"):  # openvino.Model
        return [op.get_friendly_name() for op in model.get_ordered_ops()  # type: ignore[attr-defined]
                if op.get_type_name() not in ("Constant", "Parameter", "Result")]
    return [n.name for n in model.graph.node if n.op_type != "Constant"]  # type: ignore[attr-defined]


def float_nodes(model: object, patterns: Iterable[str] = (), head: bool = True) -> list[str]:
    """Nodes of ``model`` (``onnx.ModelProto`` or ``openvino.Model``) to keep in float: with ``head``, an
    Ultralytics head's decoding (else the tail after the last heavy layer), plus nodes matching ``patterns``."""
    names = _names(model)
    keep: list[str] = []
    if head:
        ult = ultralytics_head_patterns(names)
        if ult:
            keep = matching(names, ult)
        else:
            keep = tail_nodes_openvino(model) if hasattr(model, "get_ordered_ops") else tail_nodes_onnx(model)
    extra = matching(names, patterns)
    return list(dict.fromkeys(keep + extra))


def int8_ops(model: object) -> int:
    """Quantized operations in a model: FakeQuantize ops (OpenVINO) or QuantizeLinear / QLinear* /
    *Integer nodes (ONNX)."""
    if hasattr(model, "get_ordered_ops"):
        return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    return sum(n.op_type == "QuantizeLinear" or n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")
               for n in model.graph.node)  # type: ignore[attr-defined]
