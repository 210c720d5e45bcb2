"""Accuracy-controlled quantization: disjoint calibration / validation images, and what stayed in float.

``quantize(max_drop=...)`` with NNCF runs ``nncf.quantize_with_accuracy_control``: after the ordinary INT8
quantization it ranks groups of quantizers by how much each changes the model's outputs on the validation
images and reverts the worst to float, one group at a time, until unideploy's own mAP50-95 on that
validation set is within ``max_drop`` of the float model's. This module supplies the parts around it:

* :func:`check_disjoint` — calibration and validation images must be different images (compared by
  content, so a copied or renamed file counts as the same image); otherwise the accuracy figure that
  steers the restorer is measured on images the quantizer was fitted to;
* :class:`RestorerLog` — the operations NNCF reverted to float, and whether it reached the drop, read from
  NNCF's own report lines;
* :func:`float_layers` — every weighted layer (convolution, MatMul) of the final model that runs in float,
  whatever put it there (the recipe, ``--ignore`` patterns, NNCF's own choices or accuracy control).

Example:
    >>> check_disjoint(["calib/a.jpg"], ["val/b.jpg"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from unideploy.core.errors import InputError


def _digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def overlap(calib: Iterable[str | os.PathLike], validation: Iterable[str | os.PathLike]) -> list[tuple[str, str]]:
    """(calibration file, validation file) pairs that are the same image (same bytes)."""
    by_digest: dict[str, Path] = {}
    for p in map(Path, validation):
        by_digest.setdefault(_digest(p), p)
    pairs = []
    for p in map(Path, calib):
        hit = by_digest.get(_digest(p))
        if hit is not None:
            pairs.append((str(p), str(hit)))
    return pairs


def check_disjoint(calib: Iterable[str | os.PathLike], validation: Iterable[str | os.PathLike]) -> None:
    """Refuse calibration images that are also validation images.

    Raises:
        InputError: names how many images are shared and the first pair.
    """
    calib, validation = list(calib), list(validation)
    pairs = overlap(calib, validation)
    if pairs:
        a, b = pairs[0]
        raise InputError(
            f"--calib and --data share {len(pairs)} of {len(calib)} calibration images (first: {a} = {b}); accuracy "
            "control needs calibration images disjoint from the validation images: calibrate on training images")


class RestorerLog(logging.Handler):
    """Collects NNCF's accuracy-restorer report while attached to the ``nncf`` logger (a context manager).

    Args:
        enabled: attach at all (off: a no-op context manager, NNCF's log level untouched).

    Attributes:
        reverted: names of the operations reverted to float, in NNCF's order.
        quantized_ops: quantized operations of the model before restoring (NNCF's count), or None.
        reached: False when NNCF reported that it could not reach the drop; None when no restoring was needed.
        initial_drop: drop of the fully quantized model as NNCF measured it, or None.
    """

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(logging.INFO)
        self.enabled = enabled
        self.reverted: list[str] = []
        self.quantized_ops: int | None = None
        self.reached: bool | None = None
        self.initial_drop: float | None = None
        self._logger = logging.getLogger("nncf")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        head, _, body = msg.partition("\n")
        if head.startswith("Accuracy drop:") and self.initial_drop is None:
            try:
                self.initial_drop = float(head.split()[2])
            except (IndexError, ValueError):
                pass
        elif head.startswith("Total number of quantized operations in the model:"):
            self.quantized_ops = int(head.rsplit(":", 1)[1])
        elif "were reverted back to the floating-point precision" in head:
            self.reverted = [line.strip() for line in body.splitlines() if line.strip()]
            self.reached = True if self.reached is None else self.reached
        elif head.startswith("The algorithm could not achieve the required accuracy drop"):
            self.reached = False

    def __enter__(self) -> "RestorerLog":
        if not self.enabled:
            return self
        self._level = self._logger.level
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled:
            return
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def as_dict(self) -> dict[str, Any]:
        """The log as report data."""
        return {"reverted_to_float": list(self.reverted), "quantized_ops_before": self.quantized_ops,
                "reached_drop": self.reached, "initial_drop": self.initial_drop}


#: weighted layers (OpenVINO op types / ONNX op types) and the ops between an activation quantizer and its layer
_HEAVY_OV = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}
_HEAVY_ONNX = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
_PASS_OV = {"Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Concat", "Split", "VariadicSplit"}


def _constant(node: Any, depth: int = 4) -> bool:
    """A weight: a Constant, or arithmetic on Constants only (NNCF's compressed int8 weights + scale)."""
    if node.get_type_name() == "Constant":
        return True
    return depth > 0 and all(_constant(i.get_source_output().get_node(), depth - 1) for i in node.inputs())


def _quantized_input(node: Any, depth: int = 4) -> bool:
    """An activation FakeQuantize feeds ``node`` (directly or through layout ops / concatenation)."""
    if node.get_type_name() == "FakeQuantize":
        return True
    return (node.get_type_name() in _PASS_OV and depth > 0
            and any(_quantized_input(i.get_source_output().get_node(), depth - 1) for i in node.inputs()))


def _runs_int8_ov(op: Any) -> bool:
    srcs = [i.get_source_output().get_node() for i in op.inputs()]
    return any(_quantized_input(s) for s in srcs if not _constant(s))


def float_layers(model: Any) -> list[str]:
    """Names of the weighted layers of a quantized model whose activation input has no quantizer (they run in
    float, whatever their weights are stored as).

    Args:
        model: ``openvino.Model`` with FakeQuantize ops, or a QDQ / QOperator ``onnx.ModelProto``.
    """
    if hasattr(model, "get_ordered_ops"):
        return [op.get_friendly_name() for op in model.get_ordered_ops()
                if op.get_type_name() in _HEAVY_OV and not _runs_int8_ov(op)]
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    out = []
    for n in graph.node:
        if n.op_type not in _HEAVY_ONNX:
            continue
        srcs = [producer.get(i) for i in n.input]
        if not any(s is not None and s.op_type == "DequantizeLinear" for s in srcs):
            out.append(n.name)
    return out


__all__ = ["check_disjoint", "overlap", "RestorerLog", "float_layers"]
