"""Classification-level comparison: top-1 agreement, top-5 overlap and probability deltas.

Probability deltas use the full probability vectors when both results carry them (``probs``), and
otherwise the confidences of the classes that both top-k lists contain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unideploy.core.results import Classifications


@dataclass
class ClassificationStats:
    """Classification-level comparison over all images.

    Attributes:
        images: images compared.
        top1_agreement: fraction of images whose best class is the same on both sides.
        top5_overlap: mean fraction of the reference top-5 found in the candidate top-5.
        prob_delta_max / prob_delta_mean: |candidate - reference| probability of the same class
            (largest over all images and classes; mean of the per-image largest).
        disagreements: images whose top-1 differs (name, reference and candidate class and confidence).
    """

    images: int = 0
    top1_agreement: float = 1.0
    top5_overlap: float = 1.0
    prob_delta_max: float = 0.0
    prob_delta_mean: float = 0.0
    disagreements: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _prob_delta(ref: Classifications, cand: Classifications) -> float:
    if ref.probs is not None and cand.probs is not None and np.shape(ref.probs) == np.shape(cand.probs):
        return float(np.abs(np.asarray(cand.probs, np.float64) - np.asarray(ref.probs, np.float64)).max(initial=0.0))
    cand_conf = dict(zip(cand.class_id.tolist(), cand.confidence.tolist()))
    deltas = [abs(cand_conf[k] - c) for k, c in zip(ref.class_id.tolist(), ref.confidence.tolist()) if k in cand_conf]
    return float(max(deltas, default=0.0))


class ClassificationAccumulator:
    """Accumulates classification differences image by image.

    Example:
        >>> import numpy as np
        >>> acc = ClassificationAccumulator()
        >>> acc.update("a.jpg", Classifications([3, 1], [0.7, 0.2]), Classifications([1, 3], [0.5, 0.4]))
        >>> s = acc.result()
        >>> s.top1_agreement, s.top5_overlap, round(s.prob_delta_max, 3)
        (0.0, 1.0, 0.3)
    """

    def __init__(self, topk: int = 5, keep: int = 20) -> None:
        self.topk, self.keep = int(topk), int(keep)
        self._agree: list[bool] = []
        self._overlap: list[float] = []
        self._delta: list[float] = []
        self._disagree: list[dict] = []

    @property
    def count(self) -> int:
        """Images compared so far."""
        return len(self._agree)

    def update(self, name: str, ref: Classifications, cand: Classifications) -> None:
        """Compare one image's classifications."""
        if not len(ref) or not len(cand):
            raise ValueError(f"{name}: a classification result is empty (reference {len(ref)}, candidate {len(cand)})")
        agree = ref.top1 == cand.top1
        self._agree.append(agree)
        k = min(self.topk, len(ref), len(cand))
        self._overlap.append(len(set(ref.class_id[:k].tolist()) & set(cand.class_id[:k].tolist())) / k)
        self._delta.append(_prob_delta(ref, cand))
        if not agree and len(self._disagree) < self.keep:
            self._disagree.append({"name": name, "ref": {"class_id": ref.top1, "confidence": float(ref.confidence[0])},
                                   "cand": {"class_id": cand.top1, "confidence": float(cand.confidence[0])}})

    def result(self) -> ClassificationStats:
        """The statistics so far."""
        s = ClassificationStats(images=len(self._agree), disagreements=list(self._disagree))
        if self._agree:
            s.top1_agreement = float(np.mean(self._agree))
            s.top5_overlap = float(np.mean(self._overlap))
            s.prob_delta_max = float(np.max(self._delta))
            s.prob_delta_mean = float(np.mean(self._delta))
        return s
