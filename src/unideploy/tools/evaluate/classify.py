"""Top-1 / top-5 accuracy of a classifier on an image folder with one sub-folder per class.

Sub-folders are matched to the model's classes by name (``names`` from the model's metadata), or by index when
they are named ``0``, ``1``, ...; a model without names and as many classes as there are sub-folders takes them
in sorted order (torchvision ``ImageFolder``'s convention, e.g. ImageNet's WordNet-id folders).

Example:
    >>> import unideploy
    >>> from unideploy.tools.evaluate.classify import evaluate_classification
    >>> with unideploy.load("yolov8n-cls.onnx") as p:  # doctest: +SKIP
    ...     report = evaluate_classification(p, "imagenette/val")
    >>> report["top1"], report["top5"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import InputError, SourceError
from unideploy.core.interrupts import Progress, note_progress
from unideploy.core.progress import progress_bar
from unideploy.core.sources import _is_image


def class_folders(folder: str | Path) -> list[Path]:
    """The class sub-folders of ``folder`` (those holding at least one image), sorted by name.

    Raises:
        SourceError: ``folder`` is not a folder or has no sub-folder with images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SourceError(f"{root}: expected a folder with one sub-folder of images per class, it is not a folder")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and any(_is_image(f) for f in d.iterdir() if f.is_file()))
    if not dirs:
        raise SourceError(f"{root}: expected one sub-folder of images per class, found no sub-folder with images")
    return dirs


def map_classes(folders: list[str], names: dict[int, str], num_classes: int,
                mapping: dict[str, int] | None = None) -> tuple[dict[str, int], str]:
    """Class index of each folder name, and how it was found ("given", "names", "index" or "sorted").

    Raises:
        InputError: the folders cannot be matched to the model's classes (the message lists them).
    """
    if mapping is not None:
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise InputError(f"class mapping has no entry for folder(s) {missing[:10]}")
        return {f: int(mapping[f]) for f in folders}, "given"
    by_name = {v: k for k, v in names.items()}
    if names and all(f in by_name for f in folders):
        return {f: by_name[f] for f in folders}, "names"
    if all(f.isdigit() and int(f) < num_classes for f in folders):
        return {f: int(f) for f in folders}, "index"
    if len(folders) == num_classes:
        return {f: i for i, f in enumerate(folders)}, "sorted"
    unknown = [f for f in folders if f not in by_name][:10]
    raise InputError(
        f"cannot match class folders to the model's {num_classes} classes: folder(s) {unknown} are not class names "
        f"of the model (e.g. {list(names.values())[:5]}), not class indices, and there are {len(folders)} folders, "
        f"not {num_classes}; pass mapping={{folder: index}}"
    )


def evaluate_classification(
    predictor: Any,
    folder: str | Path,
    *,
    mapping: dict[str, int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 and top-5 accuracy of an open classification predictor on ``folder``/<class>/<images>.

    Args:
        predictor: an open :class:`~unideploy.runtime.predictor.Predictor` whose task is "classify".
        folder: folder with one sub-folder of images per class.
        mapping: folder name -> class index, when the folders are not named after the model's classes.
        progress: show a progress bar on stderr.

    Returns:
        {"top1", "top5" (fractions 0..1), "images", "per_class" ({folder: {"class_id", "images", "top1",
        "top5"}}), "mapping" (how folders were matched), "skipped" (unreadable files with the reason),
        "backend", "device", "model", "seconds", "images_per_s"}.

    Raises:
        InputError: the predictor is not a classifier, or the folders do not match its classes.
        SourceError: the folder holds no class sub-folders with images.
    """
    if getattr(predictor, "task", None) != "classify":
        raise InputError(f"top-k evaluation needs a classification model; {predictor.path.name} is a "
                         f"{predictor.task} model (family {predictor.adapter.name!r})")
    dirs = class_folders(folder)
    num_classes = _num_classes(predictor)
    classes, how = map_classes([d.name for d in dirs], predictor.names, num_classes, mapping)
    files: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        imgs = sorted(f for f in d.iterdir() if f.is_file() and _is_image(f))
        files.extend(imgs)
        labels.extend([classes[d.name]] * len(imgs))
    folder_of = {i: f.parent.name for i, f in enumerate(files)}
    k = min(5, num_classes)
    per: dict[str, dict[str, Any]] = {d.name: {"class_id": classes[d.name], "images": 0, "top1": 0, "top5": 0}
                                      for d in dirs}
    skipped: list[str] = []
    hits1 = hits5 = 0
    with progress_bar(len(files), "eval", enabled=progress) as bar:
        t0 = time.perf_counter()
        done = 0
        try:
            for out in predictor.stream(files, top_k=k):
                bar.update(1)
                done += 1
                if not out.ok:
                    skipped.append(f"{out.item.name}: {out.error}")
                    continue
                label = labels[out.item.index]
                top = _top_k(out.result, k)
                entry = per[folder_of[out.item.index]]
                entry["images"] += 1
                h1, h5 = int(top[0] == label), int(label in top)
                entry["top1"] += h1
                entry["top5"] += h5
                hits1 += h1
                hits5 += h5
        except KeyboardInterrupt as e:  # SIGINT/SIGTERM: the command line says how far it got
            note_progress(e, Progress(done, len(files), "image"))
            raise
        seconds = time.perf_counter() - t0
    n = len(files) - len(skipped)
    for entry in per.values():
        m = entry["images"]
        entry["top1"] = entry["top1"] / m if m else 0.0
        entry["top5"] = entry["top5"] / m if m else 0.0
    return {
        "top1": hits1 / n if n else 0.0,
        "top5": hits5 / n if n else 0.0,
        "images": n,
        "per_class": per,
        "mapping": how,
        "skipped": skipped,
        "backend": predictor.backend_name,
        "device": str(predictor.session.device),
        "model": str(predictor.path),
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else 0.0,
    }


def _num_classes(predictor: Any) -> int:
    shape = predictor.session.outputs[0].shape
    if len(shape) >= 2 and shape[1] is not None:
        return int(shape[1])
    return len(predictor.names)


def _top_k(result: Any, k: int) -> list[int]:
    if getattr(result, "probs", None) is not None:
        return [int(i) for i in np.argsort(-result.probs, kind="stable")[:k]]
    return [int(i) for i in result.class_id[:k]]
