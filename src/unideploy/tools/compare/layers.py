"""First diverging layer: compare every intermediate tensor of two ONNX models on one input.

Each model is copied to a temporary file with every float intermediate tensor added as a graph output
(types from ONNX shape inference), opened with the same backend and device as its side of the
comparison, and run on the reference's preprocessed tensor. Tensors are matched by name, walked in the
reference graph's (topological) node order, and the first one that fails the tensor thresholds is the
first diverging layer. This works when both models share tensor names: the same graph on two backends
or devices, a perturbed or re-exported copy, or a QDQ-quantised copy (its float tensors keep their
names). Exposing every tensor can stop a runtime from fusing nodes, so the numbers describe the
unfused graph.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.tools.compare.tensors import TensorStats, compare_tensors

_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass
class LayerStat:
    """One intermediate tensor compared: its producing node and the tensor statistics."""

    tensor: str
    node: str
    op: str
    stats: TensorStats
    diverged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "node": self.node, "op": self.op, "diverged": self.diverged,
                **{k: v for k, v in self.stats.to_dict().items() if k != "name"}}


@dataclass
class LayerReport:
    """Result of the layer-by-layer comparison.

    Attributes:
        compared: tensors compared. first_diverging: the first that fails the thresholds, or None.
        layers: every compared tensor in graph order. skipped: why the analysis did not run, or None.
    """

    compared: int = 0
    first_diverging: LayerStat | None = None
    layers: list[LayerStat] = field(default_factory=list)
    skipped: str | None = None

    def worst(self, n: int = 5) -> list[LayerStat]:
        """The ``n`` tensors with the lowest cosine similarity."""
        ok = [layer for layer in self.layers if layer.stats.ok]
        return sorted(ok, key=lambda layer: layer.stats.cosine_min)[:n]

    def to_dict(self) -> dict[str, Any]:
        return {"compared": self.compared, "skipped": self.skipped,
                "first_diverging": self.first_diverging.to_dict() if self.first_diverging else None,
                "layers": [layer.to_dict() for layer in self.layers]}


def expose_intermediates(src: str | Path, dst: str | Path) -> list[tuple[str, str, str]]:
    """Save a copy of ONNX model ``src`` at ``dst`` with every float node output added as a graph output.

    Returns:
        (tensor, node name, op type) of every node output, in graph order.

    Example:
        >>> order = expose_intermediates("model.onnx", "/tmp/all_outputs.onnx")  # doctest: +SKIP
    """
    import onnx

    model = onnx.load(str(src))
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort (custom ops, > 2 GB models)
        inferred = model
    g = inferred.graph
    types = {vi.name: vi for vi in list(g.value_info) + list(g.output) + list(g.input)}
    existing = {o.name for o in model.graph.output}
    order: list[tuple[str, str, str]] = []
    for node in model.graph.node:
        for out in node.output:
            if not out:
                continue
            order.append((out, node.name, node.op_type))
            vi = types.get(out)
            if out in existing or vi is None or vi.type.tensor_type.elem_type not in _FLOAT_TYPES:
                continue
            model.graph.output.append(vi)
            existing.add(out)
    large = model.ByteSize() > 1_800_000_000 if hasattr(model, "ByteSize") else False
    onnx.save_model(model, str(dst), save_as_external_data=large)
    return order


def _feed(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    inp = session.inputs[0]
    fixed = inp.shape[0]
    if fixed and len(x) < fixed:
        x = np.concatenate([x, np.zeros((fixed - len(x), *x.shape[1:]), x.dtype)])
    return {inp.name: x}


def _run_all(predictor: Any, path: Path, x: np.ndarray, options: dict[str, Any]) -> dict[str, np.ndarray]:
    from unideploy.runtime.backends.registry import get_backend

    session = get_backend(predictor.backend_name).open(path, predictor.session.device, **options)
    try:
        out = session.run(_feed(session, x))
        return {info.name: arr for info, arr in zip(session.outputs, out)}
    finally:
        session.close()


def compare_layers(ref: Any, cand: Any, x: np.ndarray, thresholds: Any, ref_options: dict[str, Any] | None = None,
                   cand_options: dict[str, Any] | None = None) -> LayerReport:
    """Compare every intermediate tensor of two ONNX predictors on the preprocessed batch ``x``.

    Args:
        ref, cand: :class:`~unideploy.Predictor` objects on ``.onnx`` files.
        x: one preprocessed batch (the reference's preprocessing).
        thresholds: a :class:`~unideploy.tools.compare.Thresholds` (atol, rtol, rel_eps, min_cosine, max_fail_pct).
        ref_options, cand_options: ``Backend.open`` options of each side (e.g. OpenVINO ``precision``).

    Returns:
        A :class:`LayerReport` (with ``skipped`` set when the models are not both ONNX or ``onnx`` is missing).

    Example:
        >>> report = compare_layers(ref_predictor, cand_predictor, batch, Thresholds())  # doctest: +SKIP
        >>> report.first_diverging.node  # doctest: +SKIP
    """
    import importlib.util

    if ref.path.suffix.lower() != ".onnx" or cand.path.suffix.lower() != ".onnx":
        return LayerReport(skipped=f"layer comparison needs two .onnx models; got {ref.path.name} and {cand.path.name}")
    if importlib.util.find_spec("onnx") is None:
        return LayerReport(skipped="layer comparison needs the 'onnx' package: pip install 'unideploy[export]'")
    with tempfile.TemporaryDirectory(prefix="unideploy_layers_") as tmp:
        ref_tmp, cand_tmp = Path(tmp) / "ref.onnx", Path(tmp) / "cand.onnx"
        order = expose_intermediates(ref.path, ref_tmp)
        expose_intermediates(cand.path, cand_tmp)
        ref_out = _run_all(ref, ref_tmp, x, dict(ref_options or {}))
        cand_out = _run_all(cand, cand_tmp, x, dict(cand_options or {}))
    report = LayerReport()
    th = thresholds
    for tensor, node, op in order:
        if tensor not in ref_out or tensor not in cand_out:
            continue
        s = compare_tensors(cand_out[tensor], ref_out[tensor], name=tensor, atol=th.atol, rtol=th.rtol, eps=th.rel_eps)
        diverged = (not s.ok) or not (s.cosine_min >= th.min_cosine) or not (s.fail_pct <= th.max_fail_pct)
        layer = LayerStat(tensor, node, op, s, diverged)
        report.layers.append(layer)
        if diverged and report.first_diverging is None:
            report.first_diverging = layer
    report.compared = len(report.layers)
    if not report.compared:
        report.skipped = "the two models share no intermediate tensor names"
    return report
