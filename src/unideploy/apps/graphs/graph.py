"""Graph: stages wired by name into a graph (series, parallel, or both), built and type-checked once.

A graph file (the YAML that ``unideploy pipeline`` reads)::

    name: detect_then_classify
    stages:
      - name: detect                      # a model stage; reads the input image (first stage default)
        model: detector.onnx              # relative to this file, or unideploy:assets/demo/...
        conf: 0.25
      - name: crops
        op: crop                          # a built-in op: crop, resize, filter, merge
        inputs: [input, detect]
        pad: 0.1
      - name: classify
        model: classifier.onnx            # reads the previous stage when no inputs are given
      - name: labelled
        op: merge
        inputs: [detect, classify]
    output: labelled                      # default: the last stage

Stages that read the same stage run in parallel (in threads when ``parallel=True``); sessions are opened
once, shared by stages with the same model and settings, and reused for every image.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from unideploy.core.errors import UnideployError
from unideploy.apps.graphs.stages import Model, GraphError, Stage, make_op
from unideploy.apps.graphs.values import IMAGE, GraphResult

RESERVED = ("name", "op", "model", "input", "inputs")


def stage_from_dict(d: dict[str, Any]) -> Stage:
    """One stage from its graph-file entry.

    Raises:
        GraphError: not a mapping, no name, neither or both of ``model`` / ``op``, or bad parameters.
    """
    if not isinstance(d, dict):
        raise GraphError(f"each stage must be a mapping with 'name' and 'model' or 'op', got {d!r}")
    name = d.get("name")
    if not name:
        raise GraphError(f"stage {d!r} has no 'name'")
    if ("model" in d) == ("op" in d):
        raise GraphError(f"stage '{name}' needs exactly one of 'model' (a model file) or 'op' (a built-in op)")
    if "input" in d and "inputs" in d:
        raise GraphError(f"stage '{name}': give 'input' or 'inputs', not both")
    inputs = d.get("inputs", d.get("input"))
    params = {k: v for k, v in d.items() if k not in RESERVED}
    if "model" in d:
        return Model(name, d["model"], inputs, **params)
    return make_op(str(d["op"]), name, inputs, params)


class Graph:
    """A multi-model graph: models and ops wired by name.

    Args:
        stages: the stages in execution order (a stage may only read stages listed before it, or ``input``).
        output: name of the output stage (default: the last).
        name: a label for reports.
        base_dir: folder that relative model paths are resolved against (the graph file's folder).
        parallel: run independent stages of one image concurrently in threads.

    Raises:
        GraphError: duplicate names, unknown inputs, or types that do not connect (the message names the
            stage and the types); models that fail to load raise their own errors. Nothing stays open then.

    Example:
        >>> from unideploy.apps.graphs import Graph, Model, Crop, Merge
        >>> with Graph([Model("detect", "det.onnx"), Crop("crops", ["input", "detect"], pad=0.1),
        ...                Model("classify", "cls.onnx"),
        ...                Merge("labelled", ["detect", "classify"])]) as p:  # doctest: +SKIP
        ...     result = p("image.jpg")
        ...     print(result.output.class_names, result["detect"].class_names)
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        output: str | None = None,
        *,
        name: str = "pipeline",
        base_dir: str | os.PathLike | None = None,
        parallel: bool = False,
    ) -> None:
        self.name = name
        self.stages = list(stages)
        if not self.stages:
            raise GraphError("a graph needs at least one stage")
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self.parallel = bool(parallel)
        self._cache: dict = {}
        self.types: dict[str, str] = {"input": IMAGE}
        seen = ["input"]
        for i, st in enumerate(self.stages):
            if st.name in seen:
                raise GraphError(f"stage name '{st.name}' is used twice")
            if st.inputs is None:
                st.inputs = [seen[-1]]
            unknown = [n for n in st.inputs if n not in seen]
            if unknown:
                later = [n for n in unknown if n in {s.name for s in self.stages[i:]}]
                why = "is defined later (list stages in execution order)" if later else "is not a stage"
                raise GraphError(f"stage '{st.name}' reads {unknown[0]!r}, which {why}; known: {', '.join(seen)}")
            seen.append(st.name)
        self.output = output or self.stages[-1].name
        if self.output not in seen[1:]:
            raise GraphError(f"output {self.output!r} is not a stage; stages: {', '.join(seen[1:])}")
        try:
            for st in self.stages:
                st.open(self.base_dir, self._cache)
            for st in self.stages:
                self.types[st.name] = st.output_type([self.types[n] for n in st.inputs])  # type: ignore[union-attr]
        except BaseException:
            self.close()
            raise
        self.levels = self._levels()
        self.seconds: dict[str, list[float]] = {s.name: [] for s in self.stages}

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: dict[str, Any], base_dir: str | os.PathLike | None = None, **overrides: Any) -> Graph:
        """Build from a parsed graph file (see the module docstring)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list):
            raise GraphError("a pipeline file must be a mapping with a 'stages' list")
        unknown = sorted(set(doc) - {"name", "stages", "output", "parallel", "description"})
        if unknown:
            raise GraphError(
                f"unknown pipeline key(s) {unknown}; valid: name, stages, output, parallel, description"
            )
        stages = [stage_from_dict(d) for d in doc["stages"]]
        kw = dict(
            output=doc.get("output"),
            name=str(doc.get("name", "pipeline")),
            base_dir=base_dir,
            parallel=bool(doc.get("parallel", False)),
        )
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(stages, **kw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> Graph:
        """Build from a graph YAML file; relative model paths are relative to the file.

        Raises:
            GraphError: the file is missing, not YAML, or describes a graph that cannot work.

        Example:
            >>> p = Graph.from_yaml("examples/detect_then_classify.yaml")  # doctest: +SKIP
        """
        import yaml

        path = Path(path)
        if not path.is_file():
            raise GraphError(f"{path}: expected a pipeline YAML file, it does not exist")
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise GraphError(
                f"{path}: expected a pipeline YAML file, could not parse it ({str(e).splitlines()[0]})"
            ) from None
        try:
            return cls.from_dict(doc, base_dir=path.parent, **overrides)
        except GraphError as e:
            raise GraphError(f"{path}: {e}") from None

    def _levels(self) -> list[list[Stage]]:
        depth = {"input": 0}
        levels: list[list[Stage]] = []
        for st in self.stages:
            d = 1 + max(depth[n] for n in st.inputs)  # type: ignore[union-attr]
            depth[st.name] = d
            while len(levels) < d:
                levels.append([])
            levels[d - 1].append(st)
        return levels

    # -- running --------------------------------------------------------------------------------
    @property
    def models(self) -> list[Model]:
        return [s for s in self.stages if isinstance(s, Model)]

    def run_image(
        self, image: np.ndarray, name: str = "image", overrides: dict[str, Any] | None = None
    ) -> GraphResult:
        """Every stage's value for one decoded BGR image.

        ``overrides`` replaces the value of named stages (the stage is not run), e.g. ground-truth boxes in
        place of a detector's when evaluating the stages after it.
        """
        values: dict[str, Any] = {"input": image}
        res = GraphResult(name, values, self.output)
        overrides = overrides or {}

        def one(st: Stage) -> tuple[str, Any, float]:
            t0 = time.perf_counter()
            v = overrides[st.name] if st.name in overrides else st.run(*[values[n] for n in st.inputs])  # type: ignore[union-attr]
            return st.name, v, time.perf_counter() - t0

        pool = ThreadPoolExecutor(max(len(lv) for lv in self.levels)) if self.parallel else None
        try:
            for level in self.levels:
                done = list(pool.map(one, level)) if pool is not None and len(level) > 1 else [one(s) for s in level]
                for n, v, dt in done:
                    values[n] = v
                    res.seconds[n] = dt
                    self.seconds[n].append(dt)
        finally:
            if pool is not None:
                pool.shutdown()
        del values["input"]
        return res

    def __call__(self, image: Any, **kwargs: Any) -> GraphResult:
        """Run on one image (a path or a BGR array)."""
        from unideploy.core.sources import read_image

        if isinstance(image, np.ndarray):
            return self.run_image(image, **kwargs)
        return self.run_image(read_image(image), Path(str(image)).name, **kwargs)

    def stream(
        self, source: Any, vid_stride: int = 1, keep_images: bool = False
    ) -> Iterator[tuple[Any, GraphResult | None, UnideployError | None, np.ndarray | None]]:
        """``(item, result, error, image)`` for every item of a source, in order; unreadable items carry their error."""
        from unideploy.core.sources import Source

        src = source if isinstance(source, Source) else Source(source, vid_stride)
        for item in src:
            try:
                img = item.load()
            except UnideployError as e:
                yield item, None, e, None
                continue
            yield item, self.run_image(img, item.name), None, img if keep_images else None

    def describe(self) -> str:
        """The graph, one stage per line: ``name <- inputs : type``."""
        head = f"pipeline {self.name!r}: {len(self.stages)} stage(s), {len(self._cache)} session(s)"
        lines = [f"{head}, output '{self.output}'"]
        for k, level in enumerate(self.levels):
            for st in level:
                lines.append(
                    f"  [{k + 1}] {st.name:<14} {st.describe():<32} <- {', '.join(st.inputs)} : {self.types[st.name]}"
                )  # type: ignore[arg-type]
        return "\n".join(lines)

    def timings(self) -> dict[str, float]:
        """Mean seconds per image of every stage."""
        return {k: float(np.mean(v)) if v else 0.0 for k, v in self.seconds.items()}

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        for p in self._cache.values():
            p.close()
        self._cache.clear()

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Graph {self.name!r} {' -> '.join(s.name for s in self.stages)}>"


def load_graph(path: str | os.PathLike, **overrides: Any) -> Graph:
    """Build a graph from a YAML file (see :meth:`Graph.from_yaml`).

    Example:
        >>> with load_graph("examples/detect_then_classify.yaml") as p:  # doctest: +SKIP
        ...     print(p("image.jpg").output)
    """
    return Graph.from_yaml(path, **overrides)
