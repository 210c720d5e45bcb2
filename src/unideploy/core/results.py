"""Result types: one dataclass per task, validated on construction.

Postprocessors return them; eval, compare, drawing and sinks consume only them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Classifications", "Detections"]


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
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index], self.names, self.image_shape)

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
        return [
            {"xyxy": [float(v) for v in box], "confidence": float(c), "class_id": int(k), "name": n}
            for box, c, k, n in zip(self.xyxy, self.confidence, self.class_id, self.class_names)
        ]


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
