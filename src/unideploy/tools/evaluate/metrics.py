"""COCO metrics through pycocotools (the reference evaluator, not a re-implementation) for boxes, masks and
keypoints; oriented boxes, which pycocotools cannot score, as Ultralytics' OBB validator does (:mod:`.obb`)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np


#: the prediction fields pycocotools' ``loadRes`` reads for each iouType (only these are passed, so that the
#: segmentation / keypoint branch of ``loadRes`` is the one taken, as for a results file of that type)
_RESULT_FIELDS = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


def _copy_segmentation(a: dict) -> dict:
    """A copy pycocotools may rewrite (its segm evaluation replaces ``segmentation`` by RLE with bytes counts)."""
    seg = a.get("segmentation")
    return {**a, "segmentation": dict(seg)} if isinstance(seg, dict) else {**a}


def coco_map(gt: dict, predictions: list[dict], max_det: int = 300, iou_type: str = "bbox",
             kpt_sigmas: Any = None) -> dict[str, Any]:
    """mAP50-95, mAP50, mAP75 and per-class AP50-95 / AP50 of COCO-format predictions.

    ``maxDets`` is raised from COCO's 100 (20 for keypoints) to ``max_det`` (Ultralytics' default 300) so that
    low-confidence evaluation keeps the same instances as Ultralytics ``val``.

    Args:
        gt: COCO ground truth (with ``segmentation`` for "segm", ``keypoints`` + ``num_keypoints`` for "keypoints").
        predictions: COCO results records. iou_type: "bbox", "segm" or "keypoints".
        kpt_sigmas: per-keypoint OKS sigmas for "keypoints" (default: pycocotools' 17 COCO sigmas).

    Example:
        >>> gt = {"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1, "name": "a"}],
        ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}]}
        >>> round(coco_map(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}])["mAP50"], 6)
        1.0
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in _RESULT_FIELDS:
        raise ValueError(f"iou_type must be one of {', '.join(_RESULT_FIELDS)}, got {iou_type!r}")

    names = {c["id"]: c["name"] for c in gt["categories"]}
    empty = {"mAP50-95": 0.0, "mAP50": 0.0, "mAP75": 0.0,
             "per_class": {n: {"AP50-95": 0.0, "AP50": 0.0} for n in names.values()}}
    if not predictions or not gt.get("annotations"):
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "annotations": [_copy_segmentation(a) for a in gt["annotations"]]}
        coco_gt.createIndex()
        keys = ("image_id", "category_id", _RESULT_FIELDS[iou_type], "score")
        # copies: pycocotools rewrites the segmentation of what it is given (RLE counts become bytes)
        coco_dt = coco_gt.loadRes([_copy_segmentation({k: p[k] for k in keys}) for p in predictions])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [max_det] if iou_type == "keypoints" else [1, 10, max_det]
        if iou_type == "keypoints" and kpt_sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(kpt_sigmas, np.float64)
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]; -1 = no ground truth

    def mean_valid(p: np.ndarray) -> float:
        return float(np.mean(p[p > -1])) if (p > -1).any() else 0.0

    # pycocotools' summarize() reports AP50-95 at maxDets=100 whatever params.maxDets says, so the three
    # headline numbers are read from the precision array exactly as summarize() does, at maxDets[-1]
    all_area = prec[..., 0, -1]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = prec[:, :, k, 0, -1]
        p50 = prec[0, :, k, 0, -1]
        per_class[names[cat_id]] = {"AP50-95": mean_valid(p), "AP50": mean_valid(p50)}
    return {"mAP50-95": mean_valid(all_area), "mAP50": mean_valid(all_area[0]), "mAP75": mean_valid(all_area[5]),
            "per_class": per_class}
