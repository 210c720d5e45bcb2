"""Precision names: one vocabulary for every command and report.

The canonical names are ``fp32``, ``fp16``, ``bf16`` and ``int8``; ``f32`` / ``f16`` (OpenVINO's spelling),
``float32``, ``half``, ``bfloat16``, ``i8`` are accepted as aliases. A model's label says what the file stores and, in
brackets, what the runtime computes float layers in when that differs: ``fp32 (bf16)`` for an FP32 model that
OpenVINO runs in bf16 on a CPU with native bf16.

Example:
    >>> canonical_precision("f32")
    'fp32'
    >>> precision_label("fp32", "bf16")
    'fp32 (bf16)'
    >>> precision_label("fp32", "f32")
    'fp32'
"""

from __future__ import annotations

from unideploy.core.errors import OptionError

__all__ = ["PRECISIONS", "PRECISION_NAMES", "canonical_precision", "precision_label"]

#: every accepted spelling -> its canonical name
PRECISIONS = {"fp32": "fp32", "f32": "fp32", "float32": "fp32", "fp16": "fp16", "f16": "fp16", "half": "fp16",
              "float16": "fp16", "bf16": "bf16", "bfloat16": "bf16", "int8": "int8", "i8": "int8"}
#: the canonical names and the aliases as help texts say them
PRECISION_NAMES = "fp32, fp16, bf16 or int8 (f32 and f16 are aliases)"


def canonical_precision(value: str, name: str = "precision") -> str:
    """``value`` in the canonical spelling; an :class:`OptionError` naming ``name`` for anything else."""
    canon = PRECISIONS.get(str(value).strip().lower())
    if canon is None:
        raise OptionError(name, f"must be {PRECISION_NAMES}, got {value!r}")
    return canon


def precision_label(stored: str, compute: str | None = None) -> str:
    """``stored`` precision, with the ``compute`` precision in brackets when the runtime computes (float layers) in
    another one: ``int8 (bf16)`` is an INT8 model whose float layers OpenVINO runs in bf16."""
    stored = PRECISIONS.get(str(stored).lower(), stored)
    comp = PRECISIONS.get(str(compute).lower()) if compute else None
    return f"{stored} ({comp})" if comp and comp != stored else stored
