"""Export-friendly graph rewrites, optional and named: ``unideploy export ... --passes silu,static_grid``.

Each pass leaves the model's outputs unchanged (tested to 1e-5) and makes the graph easier for a compiler:

* ``silu``: SiLU written as ``x * sigmoid(x)``. On a ``torch.nn.Module`` every ``nn.SiLU`` is replaced
  before export; on an ONNX graph every ``Swish`` (opset 24) or ``Silu``/``SiLU`` node of any domain
  becomes ``Sigmoid`` + ``Mul``. For compilers without a SiLU/Swish kernel.
* ``static_grid``: fix the input to a static shape and fold everything that then becomes constant:
  ``Shape``/``Size`` of known shapes, and any node whose inputs are all constants (the ``Range``/``arange``,
  ``meshgrid``-style ``Expand``/``Tile``/``Concat`` and stride arithmetic of detection heads). For NPU
  compilers that cannot trace loops, ``arange`` or ``meshgrid``.

Example:
    >>> from unideploy.tools.convert.passes import apply_onnx_passes
    >>> apply_onnx_passes("model.onnx", ["static_grid"], imgsz=(640, 640), batch=1)  # doctest: +SKIP
    ['static_grid']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from unideploy.core.errors import InputError, ModelError


@dataclass(frozen=True)
class GraphPass:
    """A named rewrite with a torch-module form and/or an ONNX form."""

    name: str
    help: str
    torch: Callable[[Any], int] | None = None  # (module) -> number of rewrites
    onnx: Callable[..., int] | None = None  # (ModelProto, imgsz=, batch=) -> number of rewrites


# --------------------------------------------------------------------------------------------- SiLU

def silu_torch(module: Any) -> int:
    """Replace every ``torch.nn.SiLU`` inside ``module`` by an explicit ``x * sigmoid(x)`` module (in place).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SiLU())
        >>> silu_torch(net)
        1
    """
    import torch

    class ExplicitSiLU(torch.nn.Module):
        """SiLU as ``x * sigmoid(x)``."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x)

    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.SiLU):
                setattr(parent, name, ExplicitSiLU())
                count += 1
    return count


def silu_onnx(model: Any, **_: Any) -> int:
    """Rewrite ``Swish`` / ``Silu`` nodes of an ``onnx.ModelProto`` as ``Sigmoid`` + ``Mul`` (in place)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    new_nodes = []
    count = 0
    for i, node in enumerate(graph.node):
        if node.op_type == "Swish" or node.op_type.lower() == "silu":
            x, y = node.input[0], node.output[0]
            tag = node.name or f"silu{i}"
            alpha = 1.0
            for a in node.attribute:
                if a.name == "alpha":
                    alpha = helper.get_attribute_value(a)
            inner = x
            if alpha != 1.0:
                const = f"{tag}/alpha"
                graph.initializer.append(numpy_helper.from_array(np.array(alpha, np.float32), const))
                inner = f"{tag}/scaled"
                new_nodes.append(helper.make_node("Mul", [x, const], [inner], name=f"{tag}/Scale"))
            sig = f"{tag}/sigmoid"
            new_nodes.append(helper.make_node("Sigmoid", [inner], [sig], name=f"{tag}/Sigmoid"))
            new_nodes.append(helper.make_node("Mul", [x, sig], [y], name=f"{tag}/Mul"))
            count += 1
        else:
            new_nodes.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return count


# ---------------------------------------------------------------------------------------- static grid

#: never folded: they carry quantisation or randomness, or are cheaper left in the graph
_NO_FOLD = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomNormalLike",
            "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan"}
#: folded results larger than this many elements stay computed in the graph
_MAX_FOLD_ELEMENTS = 1 << 22


def set_static_input(model: Any, batch: int | None, imgsz: tuple[int, int] | None) -> bool:
    """Give the first graph input static (batch, C, H, W) dimensions where it has symbolic ones.

    Returns:
        True when a dimension was changed.

    Raises:
        InputError: the input is already static at another size, or the size needed is unknown.
    """
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if not inputs:
        raise ModelError("the ONNX graph has no input to fix")
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelError(f"input '{inp.name}' has {len(dims)} dimensions; static_grid expects an image batch (N,C,H,W)")
    nhwc = dims[3].HasField("dim_value") and dims[3].dim_value in (1, 3) and not (dims[1].HasField("dim_value") and dims[1].dim_value in (1, 3))
    want = {0: batch}
    if imgsz is not None:
        want.update({1: imgsz[0], 2: imgsz[1]} if nhwc else {2: imgsz[0], 3: imgsz[1]})
    changed = False
    for axis, d in enumerate(dims):
        value = want.get(axis)
        if d.HasField("dim_value") and d.dim_value > 0:
            if value is not None and d.dim_value != value:
                shape = tuple(x.dim_value if x.HasField("dim_value") else "?" for x in dims)
                raise InputError(f"input '{inp.name}' is fixed at {shape}; asked for dimension {axis} = {value}")
            continue
        if value is None:
            raise InputError(f"input '{inp.name}' dimension {axis} is dynamic; give --imgsz/--batch to fix it")
        d.Clear()
        d.dim_value = int(value)
        changed = True
    return changed


def _static_shapes(model: Any) -> dict[str, list[int | None]]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; folding then uses what is known
        inferred = model
    out: dict[str, list[int | None]] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _evaluate_node(node: Any, values: dict[str, np.ndarray], opsets: Any) -> list[np.ndarray]:
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    ins = [n for n in node.input if n]
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype), values[n].shape) for n in ins]
    outputs = [helper.make_value_info(o, helper.TypeProto()) for o in node.output if o]
    g = helper.make_graph([node], "fold", inputs, outputs)
    m = helper.make_model(g, opset_imports=list(opsets))
    res = ReferenceEvaluator(m).run(None, {n: values[n] for n in ins})
    return [np.asarray(r) for r in res]


def fold_static_onnx(model: Any, imgsz: tuple[int, int] | None = None, batch: int | None = 1, **_: Any) -> int:
    """Fix the input shape and fold every node that then has constant inputs (in place).

    Returns:
        Number of nodes removed from the graph.
    """
    from onnx import numpy_helper

    set_static_input(model, batch, imgsz)
    graph = model.graph
    del graph.value_info[:]  # stale symbolic shapes would hide the static ones
    before = len(graph.node)
    for _round in range(20):
        shapes = _static_shapes(model)
        consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        folded: dict[str, np.ndarray] = {}
        keep = []
        for node in graph.node:
            result: list[np.ndarray] | None = None
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                result = _evaluate_node(node, consts, model.opset_import)
            elif node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
                shape = list(consts[node.input[0]].shape) if node.input[0] in consts else shapes.get(node.input[0])
                if shape is not None and all(d is not None and d > 0 for d in shape):
                    if node.op_type == "Size":
                        result = [np.array(int(np.prod(shape)), np.int64)]
                    else:
                        attrs = {a.name: a.i for a in node.attribute}
                        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
                        result = [np.array(shape[start:end] if "end" in attrs else shape[start:], np.int64)]
            elif (node.domain in ("", "ai.onnx") and node.op_type not in _NO_FOLD
                  and all(n in consts for n in node.input if n) and any(node.input)):
                try:
                    result = _evaluate_node(node, consts, model.opset_import)
                except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: leave it in the graph
                    result = None
                if result is not None and any(r.size > _MAX_FOLD_ELEMENTS for r in result):
                    result = None
            if result is None:
                keep.append(node)
                continue
            for name, value in zip([o for o in node.output if o], result):
                consts[name] = value
                folded[name] = value
        if len(keep) == len(graph.node):
            break
        used = {n for node in keep for n in node.input} | {o.name for o in graph.output}
        new_inits = [numpy_helper.from_array(v, name) for name, v in folded.items() if name in used]
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(new_inits)
        _prune(model)
    _prune(model)
    _refresh_output_shapes(model)
    return before - len(graph.node)


def _prune(model: Any) -> None:
    """Drop nodes whose outputs nobody reads and initializers no node reads (graph outputs stay)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {n for node in graph.node for n in node.input} | outputs
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {n for node in graph.node for n in node.input} | outputs
    inits = [t for t in graph.initializer if t.name in used]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)
    # graph outputs that became initializers need a node producing them for some runtimes
    produced = {o for node in graph.node for o in node.output}
    from onnx import helper

    for o in graph.output:
        if o.name not in produced and o.name in {t.name for t in graph.initializer}:
            src = next(t for t in graph.initializer if t.name == o.name)
            graph.node.append(helper.make_node("Constant", [], [o.name], value=src))
            graph.initializer.remove(src)


def _refresh_output_shapes(model: Any) -> None:
    shapes = _static_shapes(model)
    for o in model.graph.output:
        shape = shapes.get(o.name)
        if shape and all(d is not None for d in shape):
            dims = o.type.tensor_type.shape.dim
            if len(dims) == len(shape):
                for d, v in zip(dims, shape):
                    d.Clear()
                    d.dim_value = int(v)


# ------------------------------------------------------------------------------------------ registry

PASSES: dict[str, GraphPass] = {
    "silu": GraphPass("silu", "SiLU/Swish as x * sigmoid(x)", torch=silu_torch, onnx=silu_onnx),
    "static_grid": GraphPass("static_grid", "static input shape; fold shape, grid and stride computations to constants",
                             onnx=fold_static_onnx),
}


def parse_passes(passes: Sequence[str] | str | None) -> list[str]:
    """Pass names from a list or a comma-separated string, validated.

    Raises:
        InputError: an unknown pass name (the message lists the valid ones).
    """
    if not passes:
        return []
    items = passes.split(",") if isinstance(passes, str) else list(passes)
    names = [p.strip().lower().replace("-", "_") for p in items if p and p.strip()]
    for n in names:
        if n not in PASSES:
            raise InputError(f"unknown graph pass {n!r}; valid passes: {', '.join(sorted(PASSES))}")
    return list(dict.fromkeys(names))


def apply_torch_passes(module: Any, names: Sequence[str]) -> dict[str, int]:
    """Apply the torch forms of ``names`` to ``module`` in place; returns rewrites per pass."""
    return {n: PASSES[n].torch(module) for n in names if PASSES[n].torch is not None}  # type: ignore[misc]


def apply_onnx_passes(path: str | Path, names: Sequence[str], spec: Any = None, options: Any = None, *,
                      imgsz: tuple[int, int] | None = None, batch: int | None = None) -> list[str]:
    """Apply the ONNX forms of ``names`` to the file at ``path`` (rewritten in place).

    The static size comes from ``imgsz``/``batch``, else ``options`` (ExportOptions), else ``spec``.

    Returns:
        The names of the passes applied.
    """
    import onnx

    names = parse_passes(list(names))
    if not names:
        return []
    if imgsz is None:
        imgsz = getattr(options, "imgsz", None) or getattr(spec, "imgsz", None)
    if batch is None:
        batch = getattr(options, "batch", None) or getattr(spec, "batch", None) or 1
    model = onnx.load(str(path))
    for n in names:
        fn = PASSES[n].onnx
        if fn is not None:
            fn(model, imgsz=imgsz, batch=batch)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:  # a pass produced an invalid graph: that is a bug, say which
        raise RuntimeError(f"graph passes {names} produced an invalid ONNX graph: {e}") from e
    onnx.save(model, str(path))
    return names
