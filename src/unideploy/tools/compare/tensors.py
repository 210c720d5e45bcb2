"""Tensor-level comparison: cosine similarity, absolute / relative error and tolerance failures.

Statistics are accumulated over many samples without keeping every element: sums, maxima and counts
are exact; medians come from a strided subsample once an output is larger than ``keep`` elements.
Relative error is ``|a - b| / max(|b|, eps)`` with ``b`` the reference, so it never divides by zero.
An element fails when ``|a - b| > atol + rtol * |b|`` (numpy's ``isclose`` rule); non-finite values
fail unless both sides hold the same one (both NaN, or the same infinity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from unideploy.runtime.backends.base import TensorInfo


@dataclass
class TensorStats:
    """Comparison of one output (or intermediate tensor) over all samples.

    Attributes:
        name: output name in the reference model (``ref_name/cand_name`` when matched by position).
        shape: reference shape of one sample's output; cand_shape: the candidate's.
        samples: samples compared. elements: elements compared in total.
        cosine: cosine similarity over all elements of all samples together.
        cosine_min: worst per-sample cosine similarity (what ``min_cosine`` is checked against).
        max_abs, mean_abs, median_abs: absolute error |cand - ref|.
        max_rel, mean_rel, median_rel: relative error |cand - ref| / max(|ref|, eps).
        fail_pct: percentage of elements with |cand - ref| > atol + rtol * |ref|.
        nonfinite: elements where one side is NaN/inf and the other is not the same value.
        ref_absmax: largest |ref| seen (the scale the errors should be read against).
        error: why the output could not be compared (shape or name mismatch), else None.

    Example:
        >>> import numpy as np
        >>> acc = TensorAccumulator("y", atol=1e-3, rtol=1e-3)
        >>> acc.update(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
        >>> s = acc.result()
        >>> s.max_abs, s.fail_pct, round(s.cosine, 6)
        (0.0, 0.0, 1.0)
    """

    name: str
    shape: tuple[int, ...] = ()
    cand_shape: tuple[int, ...] = ()
    samples: int = 0
    elements: int = 0
    cosine: float = float("nan")
    cosine_min: float = float("nan")
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    median_abs: float = float("nan")
    max_rel: float = float("nan")
    mean_rel: float = float("nan")
    median_rel: float = float("nan")
    fail_pct: float = float("nan")
    nonfinite: int = 0
    ref_absmax: float = float("nan")
    error: str | None = None

    @property
    def ok(self) -> bool:
        """False when the output could not be compared at all (see ``error``)."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"], d["cand_shape"] = list(self.shape), list(self.cand_shape)
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays taken as flat vectors; 1.0 when both are all zero, 0.0 when one is.

    Example:
        >>> import numpy as np
        >>> cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
        0.0
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return _cos(float(a @ b), float(a @ a), float(b @ b))


def _cos(ab: float, aa: float, bb: float) -> float:
    if aa == 0.0 and bb == 0.0:
        return 1.0
    if aa == 0.0 or bb == 0.0:
        return 0.0
    return float(np.clip(ab / np.sqrt(aa * bb), -1.0, 1.0))


class TensorAccumulator:
    """Running comparison of one output over samples; ``update(cand, ref)`` per sample, then ``result()``.

    Args:
        name: label for the report.
        atol, rtol: tolerance of the failing-element rule ``|a-b| > atol + rtol*|b|``.
        eps: floor of the relative-error denominator.
        shape, cand_shape: per-sample shapes, for the report.
        keep: most elements kept per sample for the medians (strided subsample above it).

    Example:
        >>> import numpy as np
        >>> acc = TensorAccumulator("y", atol=0.0, rtol=0.0)
        >>> acc.update(np.array([1.0, 2.5]), np.array([1.0, 2.0]))
        >>> acc.result().fail_pct
        50.0
    """

    def __init__(self, name: str, atol: float = 1e-3, rtol: float = 1e-3, eps: float = 1e-6, *,
                 shape: Sequence[int] = (), cand_shape: Sequence[int] = (), keep: int = 200_000) -> None:
        self.name, self.atol, self.rtol, self.eps, self.keep = name, float(atol), float(rtol), float(eps), int(keep)
        self.shape, self.cand_shape = tuple(shape), tuple(cand_shape)
        self._n = self._elements = self._finite = self._fail = self._nonfinite = 0
        self._ab = self._aa = self._bb = 0.0
        self._cos_min = float("inf")
        self._max_abs = self._sum_abs = self._max_rel = self._sum_rel = self._ref_absmax = 0.0
        self._abs_kept: list[np.ndarray] = []
        self._rel_kept: list[np.ndarray] = []

    def update(self, cand: np.ndarray, ref: np.ndarray) -> None:
        """Add one sample: ``cand`` and ``ref`` must have the same shape (the caller checks)."""
        a = np.asarray(cand, np.float64).ravel()
        b = np.asarray(ref, np.float64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"cand and ref must have the same size, got {a.size} and {b.size}")
        self._n += 1
        self._elements += a.size
        if not (np.isfinite(a.sum()) and np.isfinite(b.sum())):  # cheap test first; exact only when needed
            fin = np.isfinite(a) & np.isfinite(b)
            same = (np.isnan(a) & np.isnan(b)) | (a == b)  # both NaN, or the same infinity
            bad = int((~fin & ~same).sum())
            self._nonfinite += bad
            self._fail += bad
            a, b = a[fin], b[fin]
        self._finite += a.size
        if not a.size:
            return
        ab, aa, bb = float(a @ b), float(a @ a), float(b @ b)
        self._ab += ab
        self._aa += aa
        self._bb += bb
        self._cos_min = min(self._cos_min, _cos(ab, aa, bb))
        err = a - b
        np.abs(err, out=err)
        absb = np.abs(b)
        self._ref_absmax = max(self._ref_absmax, float(absb.max()))
        tmp = absb * self.rtol
        tmp += self.atol
        self._fail += int(np.count_nonzero(err > tmp))
        np.maximum(absb, self.eps, out=absb)
        rel = np.divide(err, absb, out=tmp)
        self._max_abs = max(self._max_abs, float(err.max()))
        self._sum_abs += float(err.sum())
        self._max_rel = max(self._max_rel, float(rel.max()))
        self._sum_rel += float(rel.sum())
        step = max(1, -(-err.size // self.keep))
        self._abs_kept.append(err[::step].astype(np.float32))
        self._rel_kept.append(rel[::step].astype(np.float32))

    def result(self) -> TensorStats:
        """The statistics so far."""
        s = TensorStats(self.name, tuple(self.shape), tuple(self.cand_shape or self.shape), self._n, self._elements)
        s.nonfinite = self._nonfinite
        if self._elements:
            s.fail_pct = 100.0 * self._fail / self._elements
        if self._finite:
            s.cosine = _cos(self._ab, self._aa, self._bb)
            s.cosine_min = self._cos_min
            s.max_abs, s.mean_abs = self._max_abs, self._sum_abs / self._finite
            s.max_rel, s.mean_rel = self._max_rel, self._sum_rel / self._finite
            s.median_abs = float(np.median(np.concatenate(self._abs_kept)))
            s.median_rel = float(np.median(np.concatenate(self._rel_kept)))
            s.ref_absmax = self._ref_absmax
        elif self._elements:  # every element non-finite on one side
            s.cosine = s.cosine_min = 0.0
        return s


def compare_tensors(cand: np.ndarray, ref: np.ndarray, *, name: str = "tensor", atol: float = 1e-3,
                    rtol: float = 1e-3, eps: float = 1e-6) -> TensorStats:
    """Compare two arrays in one call (a shape mismatch is reported in ``error``, not raised).

    Example:
        >>> import numpy as np
        >>> s = compare_tensors(np.ones((2, 3)), np.ones((3, 2)))
        >>> s.error
        'shape mismatch: reference (3, 2), candidate (2, 3)'
    """
    cand, ref = np.asarray(cand), np.asarray(ref)
    if cand.shape != ref.shape:
        return TensorStats(name, tuple(ref.shape), tuple(cand.shape),
                           error=f"shape mismatch: reference {tuple(ref.shape)}, candidate {tuple(cand.shape)}")
    acc = TensorAccumulator(name, atol, rtol, eps, shape=tuple(ref.shape))
    acc.update(cand, ref)
    return acc.result()


@dataclass
class OutputPairing:
    """How reference outputs map to candidate outputs.

    Attributes:
        pairs: (reference index, candidate index, label) of outputs to compare.
        by: "name", "position" or "partial" (only common names).
        unmatched_ref / unmatched_cand: output names left without a partner.
    """

    pairs: list[tuple[int, int, str]]
    by: str
    unmatched_ref: list[str] = field(default_factory=list)
    unmatched_cand: list[str] = field(default_factory=list)


def pair_outputs(ref: Sequence[TensorInfo], cand: Sequence[TensorInfo]) -> OutputPairing:
    """Match outputs by name; fall back to position when names differ but the counts agree.

    Example:
        >>> import numpy as np
        >>> from unideploy.runtime.backends.base import TensorInfo
        >>> r = [TensorInfo("output0", (1, 84, 2100), np.dtype("float32"))]
        >>> c = [TensorInfo("Identity", (1, 84, 2100), np.dtype("float32"))]
        >>> pair_outputs(r, c).by, pair_outputs(r, c).pairs
        ('position', [(0, 0, 'output0/Identity')])
    """
    ref_names = [t.name for t in ref]
    cand_names = [t.name for t in cand]
    cand_index = {n: j for j, n in enumerate(cand_names)}
    if set(ref_names) == set(cand_names):
        return OutputPairing([(i, cand_index[n], n) for i, n in enumerate(ref_names)], "name")
    if len(ref) == len(cand):
        pairs = [(i, i, r if r == c else f"{r}/{c}") for i, (r, c) in enumerate(zip(ref_names, cand_names))]
        return OutputPairing(pairs, "position")
    common = [n for n in ref_names if n in cand_index]
    return OutputPairing([(i, cand_index[n], n) for i, n in enumerate(ref_names) if n in cand_index], "partial",
                         [n for n in ref_names if n not in cand_index], [n for n in cand_names if n not in set(common)])
