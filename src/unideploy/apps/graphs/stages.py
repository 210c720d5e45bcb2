"""Graph stages: a model (any :class:`~unideploy.runtime.predictor.Predictor`) or a built-in operation.

Every stage has a name, the names of the stages it reads (``"input"`` is the graph's input image), a type
rule (which input types it takes and which type it gives; checked when the graph is built), and a call.

Built-in operations (``op:`` in YAML):

* ``crop``    (image, detections) -> crops: one patch per box, optionally padded / squared, tiny boxes skipped.
* ``resize``  image -> image, crops -> crops: to ``size`` (stretch, or ``keep_aspect``).
* ``filter``  detections -> detections: by ``classes`` (ids or names), ``min_conf``, ``min_area``, ``max_det``.
* ``merge``   (detections, crops/classification) -> detections relabelled by the classifier;
              (detections, crops/detections) -> detections of the second model mapped back into the image;
              (detections, detections, ...) -> all boxes of parallel detectors (classes unified by name,
              optional ``nms``).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

import cv2
import numpy as np

from unideploy.core.errors import GraphError
from unideploy.core.results import Classifications, Detections
from unideploy.apps.graphs.values import CLASSIFICATION, CROP_CLASSIFICATION, CROP_DETECTIONS, CROPS, DETECTIONS, IMAGE, Crops, PerCrop


class Stage:
    """Base of every stage. Subclasses implement :meth:`output_type` and :meth:`run`.

    Args:
        name: unique stage name (``"input"`` is reserved).
        inputs: names of the stages whose outputs this stage takes, in order (default: the previous stage).
    """

    kind: ClassVar[str] = "?"

    def __init__(self, name: str, inputs: str | Sequence[str] | None = None) -> None:
        if not name or not isinstance(name, str) or name == "input":
            raise GraphError(f"a stage needs a name other than 'input', got {name!r}")
        self.name = name
        self.inputs: list[str] | None = [inputs] if isinstance(inputs, str) else (list(inputs) if inputs else None)

    def open(self, base_dir: Path, cache: dict) -> None:
        """Load what the stage needs (models); called once when the graph is built."""

    def output_type(self, in_types: list[str]) -> str:
        raise NotImplementedError

    def run(self, *values: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`open` loaded."""

    def describe(self) -> str:
        return self.kind

    def _refuse(self, in_types: list[str], accepted: str) -> GraphError:
        return GraphError(
            f"stage '{self.name}' ({self.describe()}) takes {accepted}; its inputs "
            f"{self.inputs} give ({', '.join(in_types)})"
        )


# ------------------------------------------------------------------------------------------ models


def resolve_model_path(model: str | os.PathLike, base_dir: Path) -> Path:
    """A model path of a graph file: absolute, relative to the graph file, or ``unideploy:<path in package>``."""
    s = str(model)
    if s.startswith("unideploy:"):
        return Path(__file__).resolve().parents[2] / s[len("unideploy:") :]
    p = Path(s).expanduser()
    return p if p.is_absolute() else base_dir / p


class Model(Stage):
    """A model stage: a detector or classifier run on the image, or on every crop (batched).

    Args:
        name: stage name.
        model: model path (relative paths are relative to the graph file; ``unideploy:assets/...`` names a
            file inside the installed package).
        inputs: the stage to read (``input`` image or a ``crops`` stage).
        **load_kwargs: backend, device, conf, iou, imgsz, batch, family, ... as for :func:`unideploy.load`.
            Stages with the same model and settings share one session.

    Example:
        >>> Model("detect", "det.onnx", conf=0.3)  # doctest: +SKIP
    """

    kind = "model"

    def __init__(
        self, name: str, model: str | os.PathLike, inputs: str | Sequence[str] | None = None, **load_kwargs: Any
    ) -> None:
        super().__init__(name, inputs)
        self.model = model
        self.load_kwargs = load_kwargs
        self.predictor: Any = None

    def open(self, base_dir: Path, cache: dict) -> None:
        from unideploy.runtime.predictor import Predictor

        path = resolve_model_path(self.model, base_dir)
        key = (str(path.resolve()), repr(sorted(self.load_kwargs.items())))
        if key not in cache:
            try:
                cache[key] = Predictor(path, **self.load_kwargs)
            except TypeError as e:
                valid = [p for p in inspect.signature(Predictor.__init__).parameters if p not in ("self", "model")]
                raise GraphError(
                    f"stage '{self.name}': bad model option ({e}); options: {', '.join(valid)}"
                ) from None
        self.predictor = cache[key]

    @property
    def task(self) -> str:
        return self.predictor.task

    def describe(self) -> str:
        task = self.predictor.task if self.predictor is not None else "?"
        return f"{task} model {Path(str(self.model)).name}"

    def output_type(self, in_types: list[str]) -> str:
        # segment / pose / obb results are Detections too (masks, keypoints, rotated boxes ride along)
        base = CLASSIFICATION if self.task == "classify" else DETECTIONS
        if in_types == [IMAGE]:
            return base
        if in_types == [CROPS]:
            return f"crops/{base}"
        raise self._refuse(in_types, "one image or one crops input")

    def run(self, value: Any) -> Any:
        if isinstance(value, Crops):
            results = self.predictor.predict_arrays(value.images) if len(value) else []
            return PerCrop(results, value)
        return self.predictor.predict_arrays([value])[0]


# -------------------------------------------------------------------------------------------- ops


class Crop(Stage):
    """Cut one patch per detection.

    Args:
        pad: padding on each side as a fraction of the box size (0.1 = 10%).
        pad_px: extra padding in pixels on each side.
        square: grow the shorter side so the patch is square (before clipping to the image).
        min_size: boxes whose clipped patch is smaller than this (pixels, either side) get no patch.
        max_crops: keep only the highest-scoring boxes (None: all).
    """

    kind = "crop"

    def __init__(
        self,
        name: str,
        inputs: str | Sequence[str] | None = None,
        *,
        pad: float = 0.0,
        pad_px: int = 0,
        square: bool = False,
        min_size: int = 2,
        max_crops: int | None = None,
    ) -> None:
        super().__init__(name, inputs)
        if pad < 0 or pad_px < 0 or min_size < 1:
            raise GraphError(
                f"stage '{name}': pad, pad_px must be >= 0 and min_size >= 1; got {pad}, {pad_px}, {min_size}"
            )
        self.pad, self.pad_px, self.square, self.min_size, self.max_crops = (
            float(pad),
            int(pad_px),
            bool(square),
            int(min_size),
            max_crops,
        )

    def output_type(self, in_types: list[str]) -> str:
        if in_types == [IMAGE, DETECTIONS]:
            return CROPS
        raise self._refuse(in_types, "(image, detections)")

    def windows(self, det: Detections, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Integer crop windows (N, 4) and the detection index of each, for an image of ``shape``."""
        h, w = shape[:2]
        order = np.argsort(-det.confidence, kind="stable")
        if self.max_crops is not None:
            order = order[: int(self.max_crops)]
        order = np.sort(order)
        b = det.xyxy[order].astype(np.float64)
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        if self.square:
            side = np.maximum(bw, bh)
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            b = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)
            bw = bh = side
        px, py = bw * self.pad + self.pad_px, bh * self.pad + self.pad_px
        win = np.stack(
            [np.floor(b[:, 0] - px), np.floor(b[:, 1] - py), np.ceil(b[:, 2] + px), np.ceil(b[:, 3] + py)], 1
        )
        win[:, 0::2] = win[:, 0::2].clip(0, w)
        win[:, 1::2] = win[:, 1::2].clip(0, h)
        ok = ((win[:, 2] - win[:, 0]) >= self.min_size) & ((win[:, 3] - win[:, 1]) >= self.min_size)
        return win[ok].astype(np.int64), order[ok]

    def run(self, image: np.ndarray, det: Detections) -> Crops:
        win, idx = self.windows(det, image.shape[:2])
        images = [np.ascontiguousarray(image[y1:y2, x1:x2]) for x1, y1, x2, y2 in win]
        return Crops(
            images,
            win.astype(np.float32).reshape(-1, 4),
            idx.astype(np.int64),
            np.ones((len(images), 2), np.float32),
            tuple(image.shape[:2]),
            det,
        )


class Resize(Stage):
    """Resize an image or every crop to ``size`` (an int or [height, width]).

    With ``keep_aspect`` the longer side becomes ``max(size)`` and the aspect ratio is kept. Detections of a
    model run on a resized *image* are in the resized image's pixels; crops keep track of their scale, so a
    ``merge`` maps boxes found in resized crops back to the original image.
    """

    kind = "resize"

    def __init__(
        self,
        name: str,
        inputs: str | Sequence[str] | None = None,
        *,
        size: int | Sequence[int] = 224,
        keep_aspect: bool = False,
    ) -> None:
        super().__init__(name, inputs)
        hw = [int(size)] * 2 if isinstance(size, (int, float)) else [int(v) for v in size]
        if len(hw) != 2 or min(hw) < 1:
            raise GraphError(f"stage '{name}': size must be a positive int or [height, width], got {size!r}")
        self.size, self.keep_aspect = (hw[0], hw[1]), bool(keep_aspect)

    def output_type(self, in_types: list[str]) -> str:
        if in_types in ([IMAGE], [CROPS]):
            return in_types[0]
        raise self._refuse(in_types, "one image or one crops input")

    def _one(self, img: np.ndarray) -> tuple[np.ndarray, float, float]:
        h0, w0 = img.shape[:2]
        if self.keep_aspect:
            r = max(self.size) / max(h0, w0)
            h, w = max(1, round(h0 * r)), max(1, round(w0 * r))
        else:
            h, w = self.size
        out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if h * w < h0 * w0 else cv2.INTER_LINEAR)
        return out, w / w0, h / h0

    def run(self, value: Any) -> Any:
        if isinstance(value, Crops):
            images, scale = [], value.scale.copy()
            for k, im in enumerate(value.images):
                out, sx, sy = self._one(im)
                images.append(out)
                scale[k] *= (sx, sy)
            return Crops(images, value.boxes, value.det_index, scale, value.parent_shape, value.detections)
        return self._one(value)[0]


class Filter(Stage):
    """Keep only some detections.

    Args:
        classes: class ids or names to keep (None: all).
        min_conf: minimum confidence.
        min_area: minimum box area in pixels.
        max_det: keep the highest-scoring N.
    """

    kind = "filter"

    def __init__(
        self,
        name: str,
        inputs: str | Sequence[str] | None = None,
        *,
        classes: Sequence[int | str] | None = None,
        min_conf: float = 0.0,
        min_area: float = 0.0,
        max_det: int | None = None,
    ) -> None:
        super().__init__(name, inputs)
        self.classes = list(classes) if classes is not None else None
        self.min_conf, self.min_area, self.max_det = float(min_conf), float(min_area), max_det

    def output_type(self, in_types: list[str]) -> str:
        if in_types == [DETECTIONS]:
            return DETECTIONS
        raise self._refuse(in_types, "one detections input")

    def run(self, det: Detections) -> Detections:
        keep = det.confidence >= self.min_conf
        if self.min_area:
            keep &= (det.xyxy[:, 2] - det.xyxy[:, 0]) * (det.xyxy[:, 3] - det.xyxy[:, 1]) >= self.min_area
        if self.classes is not None:
            by_name = {v: k for k, v in det.names.items()}
            unknown = [c for c in self.classes if isinstance(c, str) and c not in by_name]
            if unknown:
                raise GraphError(
                    f"stage '{self.name}': class name(s) {unknown} not among the model's classes {sorted(by_name)}"
                )
            ids = [by_name[c] if isinstance(c, str) else int(c) for c in self.classes]
            keep &= np.isin(det.class_id, ids)
        idx = np.flatnonzero(keep)
        if self.max_det is not None:
            idx = np.sort(idx[np.argsort(-det.confidence[idx], kind="stable")[: int(self.max_det)]])
        return det[idx]


def _unify(*name_maps: dict[int, str]) -> tuple[dict[int, str], list[dict[int, int]]]:
    """One class table for several models' names (by name) and each model's id -> unified id map."""
    names: dict[int, str] = {}
    by_name: dict[str, int] = {}
    maps = []
    for nm in name_maps:
        m = {}
        for k, v in sorted(nm.items()):
            if v not in by_name:
                by_name[v] = len(names)
                names[len(names)] = v
            m[k] = by_name[v]
        maps.append(m)
    return names, maps


def _remap(class_id: np.ndarray, m: dict[int, int], names: dict[int, str]) -> np.ndarray:
    out = np.empty_like(class_id)
    for i, c in enumerate(class_id):
        c = int(c)
        if c not in m:  # a model without names: keep the id under its number
            m[c] = len(names)
            names[len(names)] = str(c)
        out[i] = m[c]
    return out


class Merge(Stage):
    """Combine detections with per-crop results or with other detections (see the module docstring).

    Args:
        score: relabel only: the box confidence kept, ``detector``, ``classifier`` or ``product``.
        min_conf: relabel only: drop boxes whose classifier confidence is below this.
        keep_unmatched: relabel only: keep boxes that got no crop (tiny) with the detector's class.
        keep_parent: map-back only: also keep the first input's boxes.
        nms: IoU threshold for class-aware NMS over the merged boxes (None: no NMS).
    """

    kind = "merge"
    SCORES = ("detector", "classifier", "product")

    def __init__(
        self,
        name: str,
        inputs: str | Sequence[str] | None = None,
        *,
        score: str = "detector",
        min_conf: float = 0.0,
        keep_unmatched: bool = False,
        keep_parent: bool = False,
        nms: float | None = None,
    ) -> None:
        super().__init__(name, inputs)
        if score not in self.SCORES:
            raise GraphError(f"stage '{name}': score must be one of {', '.join(self.SCORES)}; got {score!r}")
        self.score, self.min_conf, self.keep_unmatched = score, float(min_conf), bool(keep_unmatched)
        self.keep_parent, self.nms = bool(keep_parent), (float(nms) if nms is not None else None)
        self.mode = "?"

    def output_type(self, in_types: list[str]) -> str:
        if in_types == [DETECTIONS, CROP_CLASSIFICATION]:
            self.mode = "relabel"
        elif in_types == [DETECTIONS, CROP_DETECTIONS]:
            self.mode = "map_back"
        elif len(in_types) >= 2 and all(t == DETECTIONS for t in in_types):
            self.mode = "concat"
        else:
            raise self._refuse(
                in_types,
                "(detections, crops/classification), (detections, crops/detections) or (detections, detections, ...)",
            )
        return DETECTIONS

    def describe(self) -> str:
        return f"merge:{self.mode}"

    def _finish(self, xyxy, conf, cls, names, shape) -> Detections:
        det = Detections(np.asarray(xyxy, np.float32).reshape(-1, 4), conf, cls, names, shape)
        if self.nms is not None and len(det):
            from unideploy.core.ops.nms import nms

            offset = det.class_id.astype(np.float32)[:, None] * 7680.0
            keep = np.sort(nms(det.xyxy + offset, det.confidence, self.nms))
            det = det[keep]
        return det

    def run(self, *values: Any) -> Detections:
        first: Detections = values[0]
        if self.mode == "relabel":
            per: PerCrop = values[1]
            cls_names = next((r.names for r in per.results if r.names), {})
            names, (mdet, mcls) = _unify(first.names if self.keep_unmatched else {}, cls_names)
            boxes, conf, cid = [], [], []
            got = {int(d): r for d, r in zip(per.crops.det_index, per.results)}
            for i in range(len(first)):
                r: Classifications | None = got.get(i)
                if r is None or not len(r.class_id):
                    if self.keep_unmatched:
                        boxes.append(first.xyxy[i])
                        conf.append(first.confidence[i])
                        cid.append(_remap(first.class_id[i : i + 1], mdet, names)[0])
                    continue
                c = float(r.confidence[0])
                if c < self.min_conf:
                    continue
                boxes.append(first.xyxy[i])
                conf.append(
                    {"detector": first.confidence[i], "classifier": c, "product": first.confidence[i] * c}[self.score]
                )
                cid.append(_remap(r.class_id[:1], mcls, names)[0])
            return self._finish(boxes, conf, cid, names, first.image_shape)
        if self.mode == "map_back":
            per = values[1]
            sub_names = next((r.names for r in per.results if r.names), {})
            names, (m0, m1) = _unify(first.names if self.keep_parent else {}, sub_names)
            parts = [(first.xyxy, first.confidence, _remap(first.class_id, m0, names))] if self.keep_parent else []
            for k, r in enumerate(per.results):
                if len(r):
                    parts.append((per.crops.to_parent(k, r.xyxy), r.confidence, _remap(r.class_id, m1, names)))
            return self._cat(parts, names, first.image_shape)
        names, maps = _unify(*[v.names for v in values])
        parts = [(v.xyxy, v.confidence, _remap(v.class_id, m, names)) for v, m in zip(values, maps)]
        return self._cat(parts, names, first.image_shape)

    def _cat(self, parts, names, shape) -> Detections:
        if not parts:
            return Detections.empty(names, shape)
        return self._finish(
            np.concatenate([p[0] for p in parts]).reshape(-1, 4),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
            names,
            shape,
        )


#: op name -> stage class (``op:`` in a graph file)
OPS: dict[str, type[Stage]] = {"crop": Crop, "resize": Resize, "filter": Filter, "merge": Merge}


def make_op(op: str, name: str, inputs: Any, params: dict[str, Any]) -> Stage:
    """Build a built-in op stage, checking its parameters.

    Raises:
        GraphError: unknown op, or a parameter the op does not take (the message lists the valid ones).
    """
    if op not in OPS:
        raise GraphError(f"stage '{name}': unknown op {op!r}; built-in ops: {', '.join(sorted(OPS))}")
    cls = OPS[op]
    valid = [p for p, v in inspect.signature(cls.__init__).parameters.items() if v.kind == v.KEYWORD_ONLY]
    bad = sorted(set(params) - set(valid))
    if bad:
        raise GraphError(f"stage '{name}': op '{op}' has no parameter(s) {bad}; valid: {', '.join(valid)}")
    try:
        return cls(name, inputs, **params)
    except (TypeError, ValueError) as e:
        raise GraphError(f"stage '{name}': bad value for op '{op}': {e}") from None
