"""Quantization recipes: which NNCF model type to use and which layers stay in float, per model family.

A recipe is data (:class:`Recipe`), looked up by name in :data:`RECIPES`; ``quantize(recipe="auto")`` picks
``rtdetr`` for RT-DETR models and ``default`` for everything else.

* ``default`` — unideploy's general recipe: a detection head's decoding tail stays in float (``scope.py``).
  On an RT-DETR export that tail is the whole decoder (the last Ultralytics module), so only the backbone
  and hybrid encoder become INT8.
* ``seed`` — exactly the call of the RT-DETR write-up this project reproduces: ``nncf.quantize(model, data,
  preset=MIXED)`` over the whole graph, no model type, nothing kept in float.
* ``transformer`` — ``seed`` plus ``model_type=TRANSFORMER``, as NNCF recommends for transformer models and
  as Ultralytics' own OpenVINO INT8 export of RT-DETR does (NNCF then quantizes MatMul inputs per token and
  leaves more of the element-wise arithmetic and normalisations in float).
* ``rtdetr`` — ``transformer`` for the backbone and hybrid encoder (its AIFI attention layer), with the whole
  DETR decoder (the last Ultralytics module: query selection, deformable attention, box and score heads) in
  float. Measured on the bundled RT-DETR demo it loses the least accuracy (0.24 mAP50-95 points) and is the
  fastest INT8 variant: the decoder holds little of the compute but most of the accuracy risk.
* ``rtdetr-decoder`` — ``transformer`` with the decoder in INT8 too, except its coordinate paths: the box and
  score heads (``enc_bbox_head``, ``enc_score_head``, ``dec_bbox_head``, ``dec_score_head``), the query position
  head, and the deformable attention's ``sampling_offsets`` / ``attention_weights`` projections (sub-pixel
  offsets, box refinements through inverse sigmoid, and the scores that pick the top-k queries, where an 8-bit
  grid is coarse). The decoder's value/output projections, feed-forward layers and self-attention are INT8.

Example:
    >>> RECIPES.get("rtdetr").model_type
    'transformer'
    >>> resolve_recipe("auto", "rtdetr").name
    'rtdetr'
"""

from __future__ import annotations

from dataclasses import dataclass

from unideploy.core.errors import InputError
from unideploy.core.registry import Registry

#: the DETR decoder layers the ``rtdetr-decoder`` recipe keeps in float (node-name regexes, ``re.match``)
RTDETR_FLOAT_PATTERNS = (
    r"^/?model\.\d+/(?:decoder/)?(enc_bbox_head|enc_score_head|dec_bbox_head|dec_score_head|query_pos_head)[./]",
    r"^/?model\.\d+/(decoder/)?(?:.*/)?cross_attn/(sampling_offsets|attention_weights)[./]",
)


@dataclass(frozen=True)
class Recipe:
    """How one family of models is quantized.

    Attributes:
        name: registry name.
        model_type: NNCF model type ("transformer") or None.
        float_patterns: node-name regexes kept in float, added to the user's ``ignore`` patterns.
        keep_head: keep a detection head's decoding tail in float (``scope.float_nodes(head=True)``);
            None = follow ``quantize(keep_head_float=...)``.
        description: one line for reports and ``--help``.
    """

    name: str
    model_type: str | None = None
    float_patterns: tuple[str, ...] = ()
    keep_head: bool | None = None
    description: str = ""

    def as_dict(self) -> dict:
        """The recipe as report data."""
        return {"name": self.name, "model_type": self.model_type, "float_patterns": list(self.float_patterns),
                "keep_head": self.keep_head, "description": self.description}


RECIPES: Registry[Recipe] = Registry("quantization recipe", error=InputError, choices="valid recipes")
RECIPES.register("default", Recipe("default", description="decoding tail of the detection head in float"))
RECIPES.register("seed", Recipe("seed", keep_head=False,
                                description="nncf.quantize(preset) over the whole graph (the RT-DETR write-up)"))
RECIPES.register("transformer", Recipe("transformer", model_type="transformer", keep_head=False,
                                       description="whole graph, NNCF transformer model type"))
RECIPES.register("rtdetr", Recipe("rtdetr", model_type="transformer", keep_head=True,
                                  description="transformer model type for backbone and encoder; DETR decoder in float"))
RECIPES.register("rtdetr-decoder", Recipe("rtdetr-decoder", model_type="transformer",
                                          float_patterns=RTDETR_FLOAT_PATTERNS, keep_head=False,
                                          description="transformer model type, decoder INT8 except its box/score "
                                                      "heads and deformable-attention offsets/weights"))

#: model family -> recipe that ``recipe="auto"`` picks (others: ``default``)
AUTO = {"rtdetr": "rtdetr"}


def resolve_recipe(name: str | None, family: str | None) -> Recipe:
    """The recipe called ``name``; ``None`` or ``"auto"`` picks by model ``family``.

    Raises:
        InputError: unknown recipe name (the message lists the valid ones and ``auto``).
    """
    if name is None or str(name).strip().lower() == "auto":
        return RECIPES.get(AUTO.get(family or "", "default"))
    key = str(name).strip().lower()
    if key not in RECIPES:
        raise InputError(f"unknown quantization recipe {name!r}; valid recipes: auto, {', '.join(RECIPES.names())}")
    return RECIPES.get(key)


__all__ = ["Recipe", "RECIPES", "RTDETR_FLOAT_PATTERNS", "resolve_recipe", "AUTO"]
