"""Precision verification: does a converted / quantised / moved model still give the same answers?

Example:
    >>> import unideploy
    >>> result = unideploy.compare("yolov8n.onnx", "yolov8n_int8.onnx", "images/",
    ...                            atol=0.05, max_fail_pct=5, min_cosine=0.99)  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
    >>> assert result, [c.describe() for c in result.failures]  # doctest: +SKIP
"""

from __future__ import annotations

import sys

from .classification import ClassificationAccumulator, ClassificationStats
from .core import Check, CompareResult, Target, Thresholds, compare, parse_target
from .detections import DetectionAccumulator, DetectionStats, ImageDiff, match_detections
from .tensors import TensorAccumulator, TensorStats, compare_tensors, cosine, pair_outputs

__all__ = [
    "Check", "ClassificationAccumulator", "ClassificationStats", "CompareResult", "DetectionAccumulator",
    "DetectionStats", "ImageDiff", "Target", "TensorAccumulator", "TensorStats", "Thresholds", "compare",
    "compare_tensors", "cosine", "match_detections", "pair_outputs", "parse_target",
]


class _CallableModule(type(sys)):  # type: ignore[misc]
    """Importing this subpackage binds ``unideploy.compare`` to the module (Python sets the parent's attribute),
    shadowing the lazily exported function; making the module callable keeps ``unideploy.compare(...)`` working
    in either import order."""

    def __call__(self, *args, **kwargs):  # noqa: D102
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
