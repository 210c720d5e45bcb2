"""Multi-model graphs: models and built-in operations (crop, resize, filter, merge) wired in series and
in parallel, described in YAML (the files ``unideploy pipeline`` runs) or built in Python, type-checked when
built, sessions opened once.

``Pipeline``, ``PipelineResult``, ``PipelineError`` and ``load_pipeline`` are the former names of
:class:`Graph`, :class:`GraphResult`, :class:`GraphError` and :func:`load_graph`, kept for existing scripts.

Example:
    >>> from unideploy.apps.graphs import Graph, Model, Crop, Merge, load_graph
    >>> with load_graph("examples/detect_then_classify.yaml") as g:  # doctest: +SKIP
    ...     r = g("image.jpg")
    ...     print(r.output.class_names)      # detector boxes, classifier labels
    ...     print(r["detect"].class_names)   # every stage's value is kept
"""

from __future__ import annotations

from unideploy.apps.graphs.graph import Graph, load_graph, stage_from_dict
from unideploy.apps.graphs.stages import OPS, Crop, Filter, Merge, Model, Resize, Stage
from unideploy.core.errors import GraphError
from unideploy.apps.graphs.values import Crops, GraphResult, PerCrop

#: former names (before "pipeline" came to mean only the stages of one prediction)
Pipeline = Graph
PipelineResult = GraphResult
PipelineError = GraphError
load_pipeline = load_graph

__all__ = [
    "OPS",
    "Crop",
    "Crops",
    "Filter",
    "Graph",
    "GraphError",
    "GraphResult",
    "Merge",
    "Model",
    "PerCrop",
    "Resize",
    "Stage",
    "load_graph",
    "stage_from_dict",
]
