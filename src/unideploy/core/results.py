"""Result types: one dataclass per task, validated on construction.

Postprocessors return them; eval, compare, drawing and sinks consume only them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

__all__ = ["Classifications", "Detections", "Keypoints", "Masks", "OrientedBoxes", "OrientedDetections", "Poses",
           "Segmentations"]


def _names_for(class_id: np.ndarray, names: dict[int, str] | None) -> list[str]:
    names = names or {}
    return [names.get(int(c), str(int(c))) for c in class_id]


@dataclass
class Detections:
    """Boxes found in one image, in that image's pixel coordinates.

    Attributes:
        xyxy: float32 array (N, 4) of x1, y1, x2, y2.
        confidence: float32 array (N,).
        class_id: int64 array (N,).
        names: class index -> name.
        image_shape: (height, width) of the original image, when known.
        tracker_id: int64 array (N,) of track identities (set by a tracker), or None.

    Example:
        >>> import numpy as np
        >>> d = Detections(np.array([[0, 0, 10, 10]]), np.array([0.9]), np.array([2]))
        >>> len(d), d.class_id.tolist()
        (1, [2])
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    names: dict[int, str] = field(default_factory=dict)
    image_shape: tuple[int, int] | None = None
    tracker_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32)
        self.confidence = np.asarray(self.confidence, dtype=np.float32)
        self.class_id = np.asarray(self.class_id, dtype=np.int64)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            if self.xyxy.size == 0:
                self.xyxy = self.xyxy.reshape(0, 4)
            else:
                raise ValueError(f"xyxy must have shape (N, 4), got {self.xyxy.shape}")
        n = len(self.xyxy)
        for name in ("confidence", "class_id"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) to match xyxy, got {arr.shape}")
        if self.tracker_id is not None:
            self.tracker_id = np.asarray(self.tracker_id, dtype=np.int64)
            if self.tracker_id.shape != (n,):
                raise ValueError(f"tracker_id must have shape ({n},) to match xyxy, got {self.tracker_id.shape}")

    @classmethod
    def empty(cls, names: dict[int, str] | None = None, image_shape: tuple[int, int] | None = None) -> Detections:
        """Detections with no boxes."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), dict(names or {}), image_shape)

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        """Select boxes with an index, slice or boolean mask."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        tid = None if self.tracker_id is None else self.tracker_id[index]
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index], self.names, self.image_shape,
                          tid)

    @property
    def class_names(self) -> list[str]:
        """Class name of each box."""
        return _names_for(self.class_id, self.names)

    @property
    def xywh(self) -> np.ndarray:
        """Boxes as x, y (top-left), width, height: the COCO `bbox` convention."""
        out = self.xyxy.copy()
        out[:, 2:] -= out[:, :2]
        return out

    def to_dicts(self) -> list[dict]:
        """One plain dict per box (JSON-serialisable)."""
        out = [
            {"xyxy": [float(v) for v in box], "confidence": float(c), "class_id": int(k), "name": n}
            for box, c, k, n in zip(self.xyxy, self.confidence, self.class_id, self.class_names)
        ]
        if self.tracker_id is not None:
            for d, t in zip(out, self.tracker_id):
                d["tracker_id"] = int(t)
        return out


@dataclass
class Classifications:
    """Top-k classes for one image.

    Attributes:
        class_id: int64 array (K,), best first.
        confidence: float32 array (K,).
        names: class index -> name.
        probs: float32 array (C,) of every class probability, when available.
    """

    class_id: np.ndarray
    confidence: np.ndarray
    names: dict[int, str] = field(default_factory=dict)
    probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        if self.class_id.shape != self.confidence.shape:
            raise ValueError(
                f"class_id and confidence must have the same shape, got {self.class_id.shape} and {self.confidence.shape}"
            )

    def __len__(self) -> int:
        return len(self.class_id)

    @property
    def top1(self) -> int:
        """Best class index."""
        return int(self.class_id[0])

    @property
    def class_names(self) -> list[str]:
        return _names_for(self.class_id, self.names)

    def to_dicts(self) -> list[dict]:
        """One plain dict per class, best first (JSON-serialisable)."""
        return [{"class_id": int(c), "confidence": float(p), "name": n}
                for c, p, n in zip(self.class_id, self.confidence, self.class_names)]


# -- instance segmentation, pose and oriented boxes ----------------------------------------------------------------


def _as_index(index: Any) -> Any:
    return [index] if isinstance(index, (int, np.integer)) else index


@dataclass
class Masks:
    """Instance masks of one image: ``data`` (N, H, W) bool at the image's size; RLE computed on first use.

    Example:
        >>> import numpy as np
        >>> m = Masks(np.zeros((2, 4, 6), bool))
        >>> len(m), m.shape, m.rle()[0]["size"]
        (2, (4, 6), [4, 6])
    """

    data: np.ndarray
    _rle: list[dict] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data)
        if self.data.ndim != 3:
            raise ValueError(f"masks must have shape (N, H, W), got {self.data.shape}")
        if self.data.dtype != bool:
            self.data = self.data > 0.5 if self.data.dtype.kind == "f" else self.data.astype(bool)

    @classmethod
    def empty(cls, shape: tuple[int, int] | None = None) -> Masks:
        """No masks (of an image of ``shape``)."""
        return cls(np.zeros((0, *(shape or (0, 0))), bool))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Any) -> Masks:
        index = _as_index(index)
        rle = None if self._rle is None else [self._rle[i] for i in np.arange(len(self.data))[index]]
        return Masks(self.data[index], rle)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the masks."""
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def area(self) -> np.ndarray:
        """Pixels of each mask, int64 (N,)."""
        return self.data.reshape(len(self.data), -1).sum(1).astype(np.int64)

    def rle(self) -> list[dict]:
        """COCO compressed RLE of each mask (``{"size": [h, w], "counts": str}``), computed once."""
        if self._rle is None:
            from unideploy.core.ops.masks import encode_rle

            self._rle = [encode_rle(m) for m in self.data]
        return self._rle

    def polygons(self) -> list[np.ndarray]:
        """Outline (K, 2) float32 of each mask's largest contour, in pixels ((0, 2) for an empty mask)."""
        from unideploy.core.ops.masks import mask_to_polygon

        return [mask_to_polygon(m) for m in self.data]


@dataclass
class Keypoints:
    """Keypoints of each instance: ``data`` (N, K, 3) float32 of x, y (image pixels) and confidence.

    A (N, K, 2) array is accepted and gets confidence 1.

    Example:
        >>> import numpy as np
        >>> k = Keypoints(np.zeros((1, 17, 3)))
        >>> k.xy.shape, k.conf.shape
        ((1, 17, 2), (1, 17))
    """

    data: np.ndarray

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, np.float32)
        if self.data.ndim == 3 and self.data.shape[2] == 2:
            self.data = np.concatenate([self.data, np.ones((*self.data.shape[:2], 1), np.float32)], 2)
        if self.data.ndim != 3 or self.data.shape[2] != 3:
            raise ValueError(f"keypoints must have shape (N, K, 3) (x, y, confidence), got {self.data.shape}")

    @classmethod
    def empty(cls, k: int = 0) -> Keypoints:
        """No instances (of ``k`` keypoints each)."""
        return cls(np.zeros((0, k, 3), np.float32))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Any) -> Keypoints:
        return Keypoints(self.data[_as_index(index)])

    @property
    def xy(self) -> np.ndarray:
        """(N, K, 2) pixel coordinates."""
        return self.data[..., :2]

    @property
    def conf(self) -> np.ndarray:
        """(N, K) keypoint confidences."""
        return self.data[..., 2]


@dataclass
class OrientedBoxes:
    """Rotated boxes: ``xywhr`` (N, 5) float32 of centre x, centre y, width, height, rotation (radians).

    Example:
        >>> import numpy as np
        >>> b = OrientedBoxes(np.array([[10, 10, 4, 2, 0]]))
        >>> b.corners.shape, b.xyxy.tolist()
        ((1, 4, 2), [[8.0, 9.0, 12.0, 11.0]])
    """

    xywhr: np.ndarray

    def __post_init__(self) -> None:
        self.xywhr = np.asarray(self.xywhr, np.float32)
        if self.xywhr.size == 0:
            self.xywhr = self.xywhr.reshape(0, 5)
        if self.xywhr.ndim != 2 or self.xywhr.shape[1] != 5:
            raise ValueError(f"oriented boxes must have shape (N, 5) (cx, cy, w, h, radians), got {self.xywhr.shape}")

    def __len__(self) -> int:
        return len(self.xywhr)

    def __getitem__(self, index: Any) -> OrientedBoxes:
        return OrientedBoxes(self.xywhr[_as_index(index)])

    @property
    def corners(self) -> np.ndarray:
        """(N, 4, 2) corner polygons (Ultralytics' ``xyxyxyxy`` order)."""
        from unideploy.core.ops.rotated import xywhr_to_corners

        return xywhr_to_corners(self.xywhr)

    @property
    def xyxy(self) -> np.ndarray:
        """(N, 4) axis-aligned bounds of the corner polygons."""
        c = self.corners
        return np.concatenate([c.min(1), c.max(1)], 1) if len(c) else np.zeros((0, 4), np.float32)


def _task_copy(det: Detections, cls: type, **extra: Any) -> Any:
    """``det`` (a plain Detections) as an instance of the task type ``cls`` with ``extra`` fields."""
    return cls(**{f.name: getattr(det, f.name) for f in fields(Detections)}, **extra)


@dataclass
class Segmentations(Detections):
    """Detections with one instance mask each (``masks.data`` (N, H, W) bool at the image size).

    Example:
        >>> import numpy as np
        >>> s = Segmentations(np.array([[0, 0, 2, 2]]), [0.9], [0], masks=Masks(np.ones((1, 4, 4), bool)))
        >>> len(s[0].masks), s.to_dicts()[0]["mask"]["size"]
        (1, [4, 4])
    """

    masks: Masks | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.masks is None:
            self.masks = Masks.empty(self.image_shape)
        elif not isinstance(self.masks, Masks):
            self.masks = Masks(self.masks)
        if len(self.masks) != len(self.xyxy):
            raise ValueError(f"masks must have {len(self.xyxy)} entries to match xyxy, got {len(self.masks)}")

    def __getitem__(self, index: Any) -> Segmentations:
        index = _as_index(index)
        return _task_copy(Detections.__getitem__(self, index), Segmentations, masks=self.masks[index])  # type: ignore[index]

    def to_dicts(self, masks: str = "rle") -> list[dict]:
        """One dict per instance; ``masks`` "rle" (COCO RLE), "polygon" (pixel outline) or "none"."""
        out = super().to_dicts()
        if masks == "rle":
            for d, r in zip(out, self.masks.rle()):  # type: ignore[union-attr]
                d["mask"] = r
        elif masks == "polygon":
            for d, p in zip(out, self.masks.polygons()):  # type: ignore[union-attr]
                d["polygon"] = [round(float(v), 2) for v in p.ravel()]
        elif masks != "none":
            raise ValueError(f"masks must be 'rle', 'polygon' or 'none', got {masks!r}")
        return out


@dataclass
class Poses(Detections):
    """Detections with keypoints (``keypoints.data`` (N, K, 3): x, y in image pixels, confidence).

    Example:
        >>> import numpy as np
        >>> p = Poses(np.array([[0, 0, 2, 2]]), [0.9], [0], keypoints=Keypoints(np.ones((1, 5, 3))))
        >>> p.to_dicts()[0]["keypoints"][0]
        [1.0, 1.0, 1.0]
    """

    keypoints: Keypoints | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keypoints is None:
            self.keypoints = Keypoints.empty()
        elif not isinstance(self.keypoints, Keypoints):
            self.keypoints = Keypoints(self.keypoints)
        if len(self.keypoints) != len(self.xyxy):
            raise ValueError(f"keypoints must have {len(self.xyxy)} entries to match xyxy, got {len(self.keypoints)}")

    def __getitem__(self, index: Any) -> Poses:
        index = _as_index(index)
        return _task_copy(Detections.__getitem__(self, index), Poses, keypoints=self.keypoints[index])  # type: ignore[index]

    def to_dicts(self) -> list[dict]:
        """One dict per instance, with ``keypoints`` as [[x, y, conf], ...]."""
        out = super().to_dicts()
        for d, k in zip(out, self.keypoints.data):  # type: ignore[union-attr]
            d["keypoints"] = [[round(float(v), 3) for v in p] for p in k]
        return out


@dataclass
class OrientedDetections(Detections):
    """Detections whose boxes are rotated: ``obb.xywhr`` (N, 5); ``xyxy`` holds the bounds of the corner polygons.

    Build it with :meth:`from_xywhr` (which fills ``xyxy``).

    Example:
        >>> import numpy as np
        >>> o = OrientedDetections.from_xywhr(np.array([[10, 10, 4, 2, 0]]), [0.9], [1])
        >>> o.xyxy.tolist(), len(o.to_dicts()[0]["poly"])
        ([[8.0, 9.0, 12.0, 11.0]], 8)
    """

    obb: OrientedBoxes | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.obb is None:
            self.obb = OrientedBoxes(np.zeros((0, 5), np.float32))
        elif not isinstance(self.obb, OrientedBoxes):
            self.obb = OrientedBoxes(self.obb)
        if len(self.obb) != len(self.xyxy):
            raise ValueError(f"obb must have {len(self.xyxy)} entries to match xyxy, got {len(self.obb)}")

    @classmethod
    def from_xywhr(cls, xywhr: np.ndarray, confidence: Any, class_id: Any, names: dict[int, str] | None = None,
                   image_shape: tuple[int, int] | None = None) -> OrientedDetections:
        """From rotated boxes, scores and classes; ``xyxy`` becomes the polygons' axis-aligned bounds."""
        obb = OrientedBoxes(xywhr)
        return cls(obb.xyxy, confidence, class_id, dict(names or {}), image_shape, obb=obb)

    def __getitem__(self, index: Any) -> OrientedDetections:
        index = _as_index(index)
        return _task_copy(Detections.__getitem__(self, index), OrientedDetections, obb=self.obb[index])  # type: ignore[index]

    def to_dicts(self) -> list[dict]:
        """One dict per instance, with ``xywhr`` (radians) and ``poly`` (4 corners, x1, y1, ..., x4, y4)."""
        out = super().to_dicts()
        for d, r, c in zip(out, self.obb.xywhr, self.obb.corners):  # type: ignore[union-attr]
            d["xywhr"] = [float(v) for v in r]
            d["poly"] = [float(v) for v in c.ravel()]
        return out
