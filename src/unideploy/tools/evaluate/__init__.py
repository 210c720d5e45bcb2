"""Accuracy of a model on a labelled data set: COCO mAP for detectors, top-k for classifiers.

Segmentation, pose and oriented-box models get their task's mAP beside the box mAP: mask mAP (pycocotools
``iouType="segm"``), keypoint mAP (pycocotools ``iouType="keypoints"``; OKS sigmas from the data.yaml's
``kpt_oks_sigmas`` or the model's metadata, else COCO's 17 for 17 keypoints and Ultralytics' uniform ``1/K``
otherwise) and oriented-box mAP as Ultralytics' OBB validator computes it (:mod:`.obb`).

Example:
    >>> from unideploy.tools.evaluate import evaluate
    >>> report = evaluate("model.onnx", "data.yaml", backend="openvino")  # doctest: +SKIP
    >>> report["mAP50-95"], report["mAP50"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from unideploy.core.errors import InputError, SourceError
from unideploy.core.interrupts import Progress, note_progress
from unideploy.core.progress import progress_bar
from unideploy.core.sinks import coco_records
from unideploy.tools.evaluate.datasets import Dataset, load_dataset
from unideploy.tools.evaluate.labels import TASKS
from unideploy.tools.evaluate.metrics import coco_map
from unideploy.tools.evaluate.obb import obb_map

__all__ = ["evaluate", "evaluate_detection", "load_dataset", "coco_map", "obb_map", "task_metrics", "Dataset"]

#: the scorers ``evaluate(metric=...)`` offers
METRICS = ("pycocotools", "ultralytics")

#: report key and evaluator of each task's own metric
TASK_METRICS = {"segment": ("mask", "pycocotools segm"), "pose": ("pose", "pycocotools keypoints (OKS)"),
                "obb": ("obb", "Ultralytics OBB validator (probiou)")}


def _is_class_folder(p: Path) -> bool:
    return p.is_dir() and any(d.is_dir() for d in p.iterdir())


def evaluate(
    model: Any,
    data: str | Path,
    *,
    backend: str | None = None,
    device: str | None = None,
    images: str | Path | None = None,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    progress: bool = False,
    predictions_out: list | None = None,
    kpt_sigmas: Sequence[float] | None = None,
    multi_label: bool = False,
    metric: str = "pycocotools",
    **load_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` (a path or an open :class:`~unideploy.runtime.predictor.Predictor`) on ``data``.

    Args:
        model: model path or open Predictor (its conf/iou are overridden by the arguments here).
        data: COCO instances JSON (+ ``images`` folder), Ultralytics data.yaml (val split), or for
            classifiers a folder with one sub-folder of images per class.
        conf, iou, max_det: postprocessing for evaluation (low conf, as Ultralytics val).
        progress: show a progress bar on stderr.
        predictions_out: if a list is given, the COCO-format predictions are appended to it.
        kpt_sigmas: per-keypoint OKS sigmas of a pose model (default: see the module docstring).
        multi_label: NMS keeps a box once per class scoring over ``conf``, as Ultralytics' ``val`` does (default:
            the best class per box, as ``predict``).
        metric: "pycocotools" (default) or "ultralytics": for YOLO ``-seg`` / ``-pose`` models, images resized,
            and boxes and masks / keypoints scored, as Ultralytics' validators do (:mod:`.ultralytics_val`; masks
            at a quarter of the input size), with the pycocotools numbers of the same predictions under
            "pycocotools".
        **load_kwargs: passed to :func:`unideploy.load` when ``model`` is a path (imgsz, batch, family ...).

    Returns:
        For detection: {"mAP50-95", "mAP50", "mAP75", "per_class", "images", "skipped", "warnings",
        "backend", "device", "model", "seconds", "images_per_s"} (metrics in 0..1). The top-level mAP is the box
        mAP for every task; segmentation, pose and OBB models add "mask", "pose" or "obb": {"mAP50-95", "mAP50",
        "mAP75", "per_class", "metric"} (and "sigmas" for pose), when the labels carry that task's ground truth.
    """
    from unideploy.runtime.load import load
    from unideploy.tools.predict import batch_hint
    from unideploy.runtime.predictor import Predictor

    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    own = not isinstance(model, Predictor)
    if own:  # a dataset is a batch job: the throughput hint unless one is given
        load_kwargs["hint"] = batch_hint(load_kwargs.get("hint"), None)
    predictor = load(model, backend, device, **load_kwargs) if own else model
    try:
        data_p = Path(data)
        if predictor.task == "classify" or _is_class_folder(data_p):
            from unideploy.tools.evaluate.classify import evaluate_classification  # provided by the classification adapter work

            return evaluate_classification(predictor, data_p, progress=progress)
        task = predictor.task if predictor.task in TASKS else "detect"
        kpt = predictor.spec.extra.get("kpt_shape") if task == "pose" else None
        dataset = load_dataset(data_p, images, task=task, kpt_shape=tuple(kpt) if kpt else None)
        if metric == "ultralytics":
            if task not in ("segment", "pose") or dataset.task != task:
                raise InputError(f"metric 'ultralytics' scores segmentation and pose models on their own labels; "
                                 f"this is a {predictor.task} model on {dataset.task} labels: use metric "
                                 f"'pycocotools'")
            from unideploy.tools.evaluate.ultralytics_val import evaluate_ultralytics

            return evaluate_ultralytics(predictor, dataset, conf=conf, iou=iou, max_det=max_det,
                                        multi_label=multi_label, kpt_sigmas=kpt_sigmas, progress=progress,
                                        predictions_out=predictions_out)
        return evaluate_detection(predictor, dataset, conf=conf, iou=iou, max_det=max_det, progress=progress,
                                  predictions_out=predictions_out, kpt_sigmas=kpt_sigmas, multi_label=multi_label)
    finally:
        if own:
            predictor.close()


def evaluate_detection(
    predictor: Any,
    dataset: Dataset,
    *,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    progress: bool = False,
    predictions_out: list | None = None,
    on_result: Callable[[Any], None] | None = None,
    kpt_sigmas: Sequence[float] | None = None,
    multi_label: bool = False,
) -> dict[str, Any]:
    """COCO mAP of an open predictor on a loaded detection data set (see :func:`evaluate`)."""
    if not dataset.samples:
        raise SourceError(f"{dataset.source}: expected labelled images, found none")
    paths = [s.path for s in dataset.samples]
    records: list[dict] = []
    skipped: list[str] = []
    with progress_bar(len(paths), "eval", enabled=progress) as bar:
        t0 = time.perf_counter()
        done = 0
        try:
            for out in predictor.stream(paths, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label):
                if out.ok:
                    records.extend(coco_records(out.result, out.item.index + 1, out.item.name))
                    if on_result is not None:
                        on_result(out)
                else:
                    skipped.append(f"{out.item.name}: {out.error}")
                done += 1
                bar.update(1)
        except KeyboardInterrupt as e:  # SIGINT/SIGTERM: the command line says how far it got (no mAP is written)
            note_progress(e, Progress(done, len(paths), "image"))
            raise
        seconds = time.perf_counter() - t0
    gt = dataset.to_coco()
    if skipped:  # an unreadable image cannot be scored: leave it out of the ground truth too
        bad = {s.split(":")[0] for s in skipped}
        keep_ids = {im["id"] for im in gt["images"] if im["file_name"] not in bad}
        gt = {**gt, "images": [im for im in gt["images"] if im["id"] in keep_ids],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in keep_ids]}
    metrics = coco_map(gt, records, max_det=max_det)
    if dataset.task == getattr(predictor, "task", None) and dataset.task in TASK_METRICS:
        sigmas = kpt_sigmas if kpt_sigmas is not None else dataset.kpt_sigmas
        if sigmas is None:
            sigmas = predictor.spec.extra.get("kpt_oks_sigmas")
        key, _ = TASK_METRICS[dataset.task]
        metrics[key] = task_metrics(dataset, gt, records, max_det=max_det, kpt_sigmas=sigmas)
    if predictions_out is not None:
        predictions_out.extend(records)
    n = len(paths) - len(skipped)
    return {
        **metrics,
        "images": n,
        "skipped": skipped,
        "warnings": list(dataset.warnings),
        "backend": predictor.backend_name,
        "device": str(predictor.session.device),
        "model": str(predictor.path),
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else 0.0,
    }


def task_metrics(dataset: Dataset, gt: dict, records: list[dict], *, max_det: int = 300,
                 kpt_sigmas: Sequence[float] | None = None) -> dict[str, Any]:
    """The task's own mAP of COCO-format ``records`` against ``gt`` (``dataset.to_coco()``) for a segment, pose or
    obb ``dataset``: {"mAP50-95", "mAP50", "mAP75", "per_class", "metric"} (+ "sigmas" for pose).

    Raises:
        InputError: ``kpt_sigmas`` does not have one positive value per keypoint.
    """
    from unideploy.core.errors import InputError
    from unideploy.core.ops.keypoints import keypoint_sigmas

    key, metric = TASK_METRICS[dataset.task]
    if dataset.task == "segment":
        return {**coco_map(gt, [r for r in records if "segmentation" in r], max_det, "segm"), "metric": metric}
    if dataset.task == "obb":
        return {**obb_map(gt, [r for r in records if "rbox" in r]), "metric": metric}
    k = (dataset.kpt_shape or (0,))[0]
    sigmas = keypoint_sigmas(k) if kpt_sigmas is None else [float(v) for v in kpt_sigmas]
    if len(sigmas) != k or min(sigmas, default=0) <= 0:
        raise InputError(f"kpt_sigmas must be {k} positive values (one per keypoint), got {list(sigmas)}")
    out = coco_map(gt, [r for r in records if "keypoints" in r], max_det, "keypoints", kpt_sigmas=sigmas)
    return {**out, "metric": metric, "sigmas": [round(float(v), 6) for v in sigmas]}
