"""Values that flow between graph stages, and their type names (checked when a graph is built).

=====================  =========================================================================
type name              Python value
=====================  =========================================================================
``image``              BGR uint8 array (H, W, 3): the graph's input, or a resized image
``detections``         :class:`~unideploy.core.results.Detections` in the coordinates of the input image
``classification``     :class:`~unideploy.core.results.Classifications` of a whole image
``crops``              :class:`Crops`: image patches cut around detections, with their geometry
``crops/detections``   :class:`PerCrop` of Detections (in crop pixels), one per crop
``crops/classification`` :class:`PerCrop` of Classifications, one per crop
=====================  =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

IMAGE = "image"
DETECTIONS = "detections"
CLASSIFICATION = "classification"
CROPS = "crops"
CROP_DETECTIONS = "crops/detections"
CROP_CLASSIFICATION = "crops/classification"
TYPES = (IMAGE, DETECTIONS, CLASSIFICATION, CROPS, CROP_DETECTIONS, CROP_CLASSIFICATION)


@dataclass
class Crops:
    """Patches of one image, each cut around one detection.

    Attributes:
        images: the patches (BGR uint8), possibly resized.
        boxes: (N, 4) float32 xyxy window of each patch in the parent image (after padding and clipping).
        det_index: (N,) index of the detection each patch was cut for.
        scale: (N, 2) patch pixels per parent pixel (x, y): 1 until a ``resize`` stage changes it.
        parent_shape: (height, width) of the parent image.
        detections: the detections the patches were cut for (all of them, also those without a patch).

    Example:
        >>> import numpy as np
        >>> c = Crops([np.zeros((8, 8, 3), np.uint8)], np.array([[2, 2, 10, 10]], np.float32), np.array([0]),
        ...           np.ones((1, 2), np.float32), (20, 20))
        >>> c.to_parent(0, np.array([[0, 0, 4, 4]], np.float32)).tolist()
        [[2.0, 2.0, 6.0, 6.0]]
    """

    images: list[np.ndarray]
    boxes: np.ndarray
    det_index: np.ndarray
    scale: np.ndarray
    parent_shape: tuple[int, int]
    detections: Any = None

    def __len__(self) -> int:
        return len(self.images)

    def to_parent(self, k: int, xyxy: np.ndarray) -> np.ndarray:
        """Map boxes in patch ``k``'s pixels back to the parent image."""
        out = np.asarray(xyxy, np.float32).copy()
        out[:, 0::2] = out[:, 0::2] / self.scale[k, 0] + self.boxes[k, 0]
        out[:, 1::2] = out[:, 1::2] / self.scale[k, 1] + self.boxes[k, 1]
        return out


@dataclass
class PerCrop:
    """One result per patch of a :class:`Crops` (aligned with ``crops.images``)."""

    results: list[Any]
    crops: Crops

    def __len__(self) -> int:
        return len(self.results)


@dataclass
class GraphResult:
    """Every stage's value for one input image; ``output`` is the graph's output stage value.

    Example:
        >>> r = graph("image.jpg")  # doctest: +SKIP
        >>> r.output, r["detect"], list(r)  # doctest: +SKIP
    """

    name: str
    values: dict[str, Any] = field(default_factory=dict)
    output_stage: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def output(self) -> Any:
        return self.values[self.output_stage]

    def __getitem__(self, stage: str) -> Any:
        return self.values[stage]

    def __iter__(self):
        return iter(self.values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view of every stage value except images and crops."""
        return {
            "name": self.name,
            "output": self.output_stage,
            "stages": {k: to_jsonable(v) for k, v in self.values.items() if not _is_pixels(v)},
        }


def _is_pixels(v: Any) -> bool:
    return isinstance(v, (np.ndarray, Crops))


def to_jsonable(v: Any) -> Any:
    """Plain-data form of a stage value (detections as dicts, classifications as top-k lists)."""
    from unideploy.core.results import Classifications, Detections

    if isinstance(v, Detections):
        return v.to_dicts()
    if isinstance(v, Classifications):
        return v.to_dicts()
    if isinstance(v, PerCrop):
        return [
            {
                "box": [float(x) for x in v.crops.boxes[k]],
                "detection": int(v.crops.det_index[k]),
                "result": to_jsonable(r),
            }
            for k, r in enumerate(v.results)
        ]
    if isinstance(v, Crops):
        return {"crops": len(v)}
    if isinstance(v, np.ndarray):
        return {"shape": list(v.shape)}
    return v
