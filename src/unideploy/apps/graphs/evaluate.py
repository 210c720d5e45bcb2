"""Accuracy of every stage of a graph on a labelled detection data set.

* Every stage whose value is ``detections`` (the detector, a filter, the final relabelled output) gets COCO
  mAP through pycocotools against the data set, classes matched by name.
* Every classifier run on crops is scored on its own: the crops are cut around the *ground-truth* boxes
  (the crop stage's detections input is replaced by the labels) and its top-1 class is compared with the
  label, so a detector's misses do not count against the classifier.

Example:
    >>> from unideploy.apps.graphs import load_graph
    >>> from unideploy.apps.graphs.evaluate import evaluate_graph
    >>> with load_graph("examples/detect_then_classify.yaml") as p:  # doctest: +SKIP
    ...     report = evaluate_graph(p, "shapes/data.yaml")
    ...     report["stages"]["detect"]["mAP50"], report["stages"]["classify"]["top1"]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import SourceError, UnideployError
from unideploy.core.results import Detections
from unideploy.apps.graphs.graph import Graph
from unideploy.apps.graphs.stages import Crop
from unideploy.apps.graphs.values import CROP_CLASSIFICATION, DETECTIONS, PerCrop


def _class_map(names: dict[int, str], data_names: dict[int, str]) -> tuple[dict[int, int], list[str]]:
    """Model class id -> data set class id, by name (by id when the model has no names); unmatched names."""
    by_name = {v: k for k, v in data_names.items()}
    if not names:
        return {k: k for k in data_names}, []
    m = {k: by_name[v] for k, v in names.items() if v in by_name}
    return m, sorted(v for v in names.values() if v not in by_name)


def evaluate_graph(
    graph: Graph,
    data: str | Path,
    *,
    images: str | Path | None = None,
    progress: bool = False,
    max_det: int = 300,
) -> dict[str, Any]:
    """Per-stage accuracy of ``graph`` on a COCO JSON or Ultralytics data.yaml (val split).

    Returns:
        ``{"pipeline", "images", "seconds", "skipped", "warnings", "stages": {name: metrics}}`` where a
        detections stage has ``mAP50-95``, ``mAP50``, ``mAP75``, ``per_class`` and a crop classifier has
        ``top1``, ``crops`` and ``per_class`` accuracy (on ground-truth boxes).

    Raises:
        SourceError: the data set has no labelled images.
    """
    from unideploy.tools.evaluate import load_dataset
    from unideploy.tools.evaluate.metrics import coco_map
    from unideploy.core.sources import read_image

    ds = load_dataset(Path(data), images)
    if not ds.samples:
        raise SourceError(f"{data}: expected labelled images, found none")
    det_stages = [n for n, t in graph.types.items() if t == DETECTIONS]
    cls_stages = [s.name for s in graph.models if graph.types[s.name] == CROP_CLASSIFICATION]
    crop_inputs = {s.inputs[1] for s in graph.stages if isinstance(s, Crop)}  # type: ignore[index]
    records: dict[str, list[dict]] = {n: [] for n in det_stages}
    unmatched: dict[str, set[str]] = {n: set() for n in det_stages}
    cls_hits: dict[str, dict[str, list[int]]] = {n: {} for n in cls_stages}
    skipped: list[str] = []
    from unideploy.core.progress import progress_bar

    bar = progress_bar(len(ds.samples), "eval", enabled=progress)
    t0 = time.perf_counter()
    for image_id, sample in enumerate(ds.samples, 1):
        try:
            img = read_image(sample.path)
        except UnideployError as e:
            skipped.append(f"{sample.path.name}: {e}")
            continue
        res = graph.run_image(img, sample.path.name)
        for n in det_stages:
            det: Detections = res[n]
            m, bad = _class_map(det.names, ds.names)
            unmatched[n].update(bad)
            for box, s, c in zip(det.xywh, det.confidence, det.class_id):
                if int(c) in m:
                    records[n].append(
                        {
                            "image_id": image_id,
                            "category_id": m[int(c)] + 1,
                            "bbox": [float(v) for v in box],
                            "score": float(s),
                        }
                    )
        if cls_stages and crop_inputs:
            gt = Detections(
                sample.xyxy, np.ones(len(sample.xyxy), np.float32), sample.class_id, ds.names, img.shape[:2]
            )
            forced = graph.run_image(img, sample.path.name, overrides={n: gt for n in crop_inputs})
            for n in cls_stages:
                per: PerCrop = forced[n]
                for k, r in enumerate(per.results):
                    want = ds.names[int(sample.class_id[per.crops.det_index[k]])]
                    got = r.class_names[0] if len(r) else None
                    cls_hits[n].setdefault(want, []).append(int(got == want))
        bar.update(1)
    seconds = time.perf_counter() - t0
    bar.close()
    gt_coco = ds.to_coco()
    if skipped:
        bad_names = {s.split(":")[0] for s in skipped}
        keep = {im["id"] for im in gt_coco["images"] if im["file_name"] not in bad_names}
        gt_coco = {
            **gt_coco,
            "images": [im for im in gt_coco["images"] if im["id"] in keep],
            "annotations": [a for a in gt_coco["annotations"] if a["image_id"] in keep],
        }
    stages: dict[str, Any] = {}
    warnings = list(ds.warnings)
    for n in det_stages:
        stages[n] = {"type": DETECTIONS, **coco_map(gt_coco, records[n], max_det=max_det)}
        if unmatched[n]:
            warnings.append(f"stage '{n}' predicts class(es) not in the data set, left out: {sorted(unmatched[n])}")
    for n in cls_stages:
        hits = cls_hits[n]
        flat = [h for v in hits.values() for h in v]
        stages[n] = {
            "type": CROP_CLASSIFICATION,
            "on": "ground-truth boxes",
            "crops": len(flat),
            "top1": float(np.mean(flat)) if flat else 0.0,
            "per_class": {k: float(np.mean(v)) for k, v in sorted(hits.items())},
        }
    n_img = len(ds.samples) - len(skipped)
    return {
        "pipeline": graph.name,
        "images": n_img,
        "seconds": seconds,
        "images_per_s": n_img / seconds if seconds > 0 else 0.0,
        "skipped": skipped,
        "warnings": warnings,
        "stages": stages,
        "timings_ms": {k: v * 1e3 for k, v in graph.timings().items()},
    }


def format_report(r: dict[str, Any]) -> str:
    """Human-readable table of :func:`evaluate_graph`'s report."""
    lines = [f"pipeline {r['pipeline']!r}: {r['images']} image(s), {r['images_per_s']:.1f} images/s"]
    for name, m in r["stages"].items():
        if m["type"] == DETECTIONS:
            lines.append(f"  {name:<16} detections            mAP50-95 {m['mAP50-95']:.4f}  mAP50 {m['mAP50']:.4f}")
        else:
            lines.append(f"  {name:<16} crop classifier       top1 {m['top1']:.4f} on {m['crops']} ground-truth crops")
    return "\n".join(lines)


__all__ = ["evaluate_graph", "format_report"]
