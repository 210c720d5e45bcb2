"""Precision verification: does a converted / quantised / moved model still give the same answers?

Example:
    >>> import unideploy
    >>> result = unideploy.compare("yolov8n.onnx", "yolov8n_int8.onnx", "images/",
    ...                            atol=0.05, max_fail_pct=5, min_cosine=0.99)  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
    >>> assert result, [c.describe() for c in result.failures]  # doctest: +SKIP
"""

from __future__ import annotations

from unideploy.tools.compare.classification import ClassificationAccumulator, ClassificationStats
from unideploy.tools.compare.core import compare
from unideploy.tools.compare.detections import DetectionAccumulator, DetectionStats, ImageDiff, match_detections
from unideploy.tools.compare.result import Check, CompareResult, Target, Thresholds, parse_target
from unideploy.tools.compare.tensors import TensorAccumulator, TensorStats, compare_tensors, cosine, pair_outputs

__all__ = [
    "Check", "ClassificationAccumulator", "ClassificationStats", "CompareResult", "DetectionAccumulator",
    "DetectionStats", "ImageDiff", "Target", "TensorAccumulator", "TensorStats", "Thresholds", "compare",
    "compare_tensors", "cosine", "match_detections", "pair_outputs", "parse_target",
]

