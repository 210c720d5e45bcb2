"""COCO detection metrics through pycocotools (the reference evaluator), not a re-implementation."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np


def coco_map(gt: dict, predictions: list[dict], max_det: int = 300) -> dict[str, Any]:
    """mAP50-95, mAP50, mAP75 and per-class AP50-95 / AP50 of COCO-format predictions.

    ``maxDets`` is raised from COCO's 100 to ``max_det`` (Ultralytics' default 300) so that low-confidence
    evaluation keeps the same boxes as Ultralytics ``val``.

    Example:
        >>> gt = {"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1, "name": "a"}],
        ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}]}
        >>> round(coco_map(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}])["mAP50"], 6)
        1.0
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = {c["id"]: c["name"] for c in gt["categories"]}
    empty = {"mAP50-95": 0.0, "mAP50": 0.0, "mAP75": 0.0,
             "per_class": {n: {"AP50-95": 0.0, "AP50": 0.0} for n in names.values()}}
    if not predictions or not gt.get("annotations"):
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "annotations": gt["annotations"]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{k: p[k] for k in ("image_id", "category_id", "bbox", "score")} for p in predictions])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, max_det]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
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
