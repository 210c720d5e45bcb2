"""Multi-model pipelines: models and built-in operations (crop, resize, filter, merge) wired in series and
in parallel, described in YAML or built in Python, type-checked when built, sessions opened once.

Example:
    >>> from unideploy.multimodel import Pipeline, Model, Crop, Merge, load_pipeline
    >>> with load_pipeline("examples/detect_then_classify.yaml") as p:  # doctest: +SKIP
    ...     r = p("image.jpg")
    ...     print(r.output.class_names)      # detector boxes, classifier labels
    ...     print(r["detect"].class_names)   # every stage's value is kept
"""

from __future__ import annotations

from .graph import Pipeline, load_pipeline, stage_from_dict
from .stages import OPS, Crop, Filter, Merge, Model, PipelineError, Resize, Stage
from .values import Crops, PerCrop, PipelineResult

__all__ = [
    "OPS",
    "Crop",
    "Crops",
    "Filter",
    "Merge",
    "Model",
    "PerCrop",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "Resize",
    "Stage",
    "load_pipeline",
    "stage_from_dict",
]
