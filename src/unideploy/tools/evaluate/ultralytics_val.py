"""``evaluate(..., metric="ultralytics")``: a YOLO seg or pose model scored as Ultralytics' ``val`` scores it.

Each image is resized as the validator's loader does (:func:`~.ultralytics_seg.validator_letterbox`), run once,
and its raw outputs give both the usual results (the adapter's, for the pycocotools numbers kept beside) and the
validator's view (NMS output in input pixels, nothing dropped) that :mod:`.ultralytics_seg` (boxes, masks) and
:mod:`.ultralytics_pose` (boxes, keypoints) score.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from unideploy.core.errors import InputError

__all__ = ["ULTRALYTICS_FAMILIES", "evaluate_ultralytics"]

#: task -> the adapter whose raw outputs the Ultralytics metric reads
ULTRALYTICS_FAMILIES = {"segment": "yolo_seg", "pose": "yolo_pose"}


def _polygon(extra: Any, source: str) -> np.ndarray:
    """One instance's ground-truth polygon (K, 2) in pixels; a COCO RLE or multi-part polygon cannot be one."""
    if isinstance(extra, np.ndarray) and extra.ndim == 2 and extra.shape[1] == 2:
        return extra
    if isinstance(extra, list) and len(extra) == 1 and len(extra[0]) >= 6:
        return np.asarray(extra[0], np.float64).reshape(-1, 2)
    raise InputError(f"{source}: metric 'ultralytics' expects one polygon per instance (YOLO segmentation labels "
                     f"or single-polygon COCO segmentations), got {type(extra).__name__}; use metric 'pycocotools'")


def evaluate_ultralytics(predictor: Any, dataset: Any, *, conf: float, iou: float, max_det: int,
                         multi_label: bool = False, kpt_sigmas: Sequence[float] | None = None,
                         progress: bool = False, predictions_out: list | None = None) -> dict[str, Any]:
    """Box and mask (seg) or keypoint (pose) mAP of a YOLO predictor, scored as Ultralytics' validators.

    The report has the shape of :func:`unideploy.tools.evaluate.evaluate`'s (box mAP at the top, ``"mask"`` or
    ``"pose"`` beside it, both Ultralytics'); ``"pycocotools"`` holds the default scorer's numbers of the same
    predictions (the adapter's results of the same outputs).

    Raises:
        InputError: not a YOLO seg / pose model with an NMS head and letterbox resize, labels that are not
            polygons, or ``kpt_sigmas`` without one positive value per keypoint.
    """
    from unideploy.core.ops.keypoints import keypoint_sigmas
    from unideploy.core.progress import progress_bar
    from unideploy.core.sinks import coco_records
    from unideploy.core.sources import read_image
    from unideploy.tools.evaluate.metrics import coco_map
    from unideploy.tools.evaluate.ultralytics_pose import UltralyticsPoseScorer, raw_pose
    from unideploy.tools.evaluate.ultralytics_seg import UltralyticsSegScorer, raw_segmentation, validator_letterbox

    adapter, spec, task = predictor.adapter, predictor.spec, dataset.task
    if adapter.name != ULTRALYTICS_FAMILIES.get(task) or spec.end2end or spec.resize != "letterbox":
        raise InputError(f"metric 'ultralytics' scores Ultralytics YOLO -seg / -pose models with an NMS head "
                         f"(families {', '.join(ULTRALYTICS_FAMILIES.values())}); this model is {adapter.name}"
                         f"{' end-to-end' if spec.end2end else ''}: use metric 'pycocotools'")
    scorer: Any
    if task == "segment":
        extras = [[_polygon(e, str(s.path)) for e in (s.extras or [])] for s in dataset.samples]
        scorer = UltralyticsSegScorer(predictor.names)
    else:
        k = adapter.kpt_shape[0]
        sig = kpt_sigmas if kpt_sigmas is not None else dataset.kpt_sigmas
        sig = keypoint_sigmas(k) if sig is None else [float(v) for v in sig]
        if len(sig) != k or min(sig, default=0) <= 0:
            raise InputError(f"kpt_sigmas must be {k} positive values (one per keypoint), got {list(sig)}")
        extras = [s.extras or [] for s in dataset.samples]
        scorer = UltralyticsPoseScorer(predictor.names, sig)
    opts = predictor.postprocess_options(conf=conf, iou=iou, max_det=max_det, multi_label=multi_label)
    input_hw = tuple(spec.imgsz)
    records: list[dict] = []
    skipped: list[str] = []
    t0 = time.perf_counter()
    with progress_bar(len(dataset.samples), "eval", enabled=progress) as bar:
        for i, (s, ex) in enumerate(zip(dataset.samples, extras)):
            try:
                img = read_image(s.path)
            except Exception as e:  # noqa: BLE001  an unreadable image is reported and left out, as in evaluate
                skipped.append(f"{s.path.name}: {e}")
                bar.update(1)
                continue
            resized, info = validator_letterbox(img, input_hw, int(spec.pad_value))
            out = [o[:1] for o in predictor.infer(adapter.to_tensor(resized)[None])]
            records.extend(coco_records(adapter.postprocess(out, [info], opts)[0], i + 1, s.path.name))
            if task == "segment":
                boxes, scores, cls, protos, coeffs = raw_segmentation(adapter, out, opts)
                scorer.add_image(s.class_id, s.xyxy, ex, info, input_hw, boxes, scores, cls, protos, coeffs)
            else:
                boxes, scores, cls, kpts = raw_pose(adapter, out, opts)
                gk = np.stack(ex) if len(ex) else np.zeros((0, adapter.kpt_shape[0], 3))
                scorer.add_image(s.class_id, s.xyxy, gk, info, boxes, scores, cls, kpts)
            bar.update(1)
    seconds = time.perf_counter() - t0
    gt = dataset.to_coco()
    if skipped:
        bad = {x.split(":")[0] for x in skipped}
        keep = {im["id"] for im in gt["images"] if im["file_name"] not in bad}
        gt = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    ours = scorer.result()
    field, iou_type = ("segmentation", "segm") if task == "segment" else ("keypoints", "keypoints")
    coco = {"box": coco_map(gt, records, max_det=max_det),
            scorer.key: coco_map(gt, [r for r in records if field in r], max_det, iou_type,
                                 kpt_sigmas=getattr(scorer, "sigmas", None))}
    if predictions_out is not None:
        predictions_out.extend(records)
    n = len(dataset.samples) - len(skipped)
    return {**ours["box"], scorer.key: ours[scorer.key], "pycocotools": coco, "images": n, "skipped": skipped,
            "warnings": list(dataset.warnings), "backend": predictor.backend_name,
            "device": str(predictor.session.device), "model": str(predictor.path), "seconds": seconds,
            "images_per_s": n / seconds if seconds > 0 else 0.0}
