"""Labelled data sets: COCO JSON + image folder, or an Ultralytics data.yaml (YOLO txt labels).

Both load into one in-memory form (a list of :class:`Sample` plus class names) for any of the tasks detection,
segmentation (polygons / COCO segmentations), pose (keypoints) and oriented boxes (corners); the label formats are
in :mod:`unideploy.tools.evaluate.labels`. Problems in labels are collected as warnings (a box outside the image is
clipped, an unknown class id or a malformed line is dropped, an image without a label file counts as having no
objects, a missing image is skipped): they are reported, never fatal.

COCO ``iscrowd`` annotations are kept as crowd regions, so that pycocotools treats them as it does on the original
file (a detection on a crowd is neither a true nor a false positive).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.errors import SourceError
from unideploy.core.sources import IMAGE_SUFFIXES
from unideploy.tools.evaluate.labels import LabelError, annotation_extras, coco_extras, parse_line


@dataclass
class Sample:
    """One labelled image: ground-truth xyxy boxes in pixels and class indices, plus the task's part.

    Attributes:
        extras: per instance, the task's ground truth in pixels: a polygon (K, 2) or COCO segmentation (segment),
            keypoints (K, 3) x, y, visibility (pose), corners (4, 2) (obb); None for detection.
        areas: per instance COCO ``area`` as given in a COCO JSON (None: computed, see
            :func:`~unideploy.tools.evaluate.labels.coco_extras`). iscrowd: per instance COCO crowd flag.
    """

    path: Path
    width: int
    height: int
    xyxy: np.ndarray
    class_id: np.ndarray
    extras: list[Any] | None = None
    areas: list[float | None] | None = None
    iscrowd: np.ndarray | None = None

    def select(self, keep: np.ndarray) -> None:
        """Keep only the instances where ``keep`` is True (in place)."""
        idx = np.flatnonzero(keep)
        self.xyxy, self.class_id = self.xyxy[idx], self.class_id[idx]
        if self.extras is not None:
            self.extras = [self.extras[i] for i in idx]
        if self.areas is not None:
            self.areas = [self.areas[i] for i in idx]
        if self.iscrowd is not None:
            self.iscrowd = self.iscrowd[idx]


@dataclass
class Dataset:
    """A labelled data set: samples, class names, the task its labels are for and, for pose, the keypoint shape."""

    samples: list[Sample]
    names: dict[int, str]
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    task: str = "detect"
    kpt_shape: tuple[int, int] | None = None
    kpt_sigmas: list[float] | None = None

    def to_coco(self) -> dict:
        """COCO ground truth: image ids are 1-based positions, category id = class index + 1.

        Annotations carry the task's fields (``segmentation``, ``keypoints`` + ``num_keypoints``, ``poly``).
        """
        images, anns = [], []
        task = self.task if self.task in ("segment", "pose", "obb") else "detect"
        for i, s in enumerate(self.samples, 1):
            images.append({"id": i, "file_name": s.path.name, "width": s.width, "height": s.height})
            for j, (box, c) in enumerate(zip(s.xyxy, s.class_id)):
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                area = s.areas[j] if s.areas is not None else None
                extra = s.extras[j] if s.extras is not None else None
                fields = coco_extras(task if extra is not None else "detect", extra, w * h, area)
                if task == "pose" and "num_keypoints" not in fields:  # a crowd region: no keypoints
                    fields.update(keypoints=[0.0] * 3 * (self.kpt_shape or (0,))[0], num_keypoints=0)
                crowd = int(s.iscrowd[j]) if s.iscrowd is not None else 0
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1,
                             "bbox": [float(box[0]), float(box[1]), w, h], **fields, "iscrowd": crowd})
        cats = [{"id": k + 1, "name": v} for k, v in sorted(self.names.items())]
        if task == "pose" and self.kpt_shape:
            for c in cats:
                c["keypoints"] = [str(k) for k in range(self.kpt_shape[0])]
        return {"images": images, "annotations": anns, "categories": cats}


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels (JPEG/PNG), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(head[i + 7 : i + 9], "big"), int.from_bytes(head[i + 5 : i + 7], "big")
            seg = int.from_bytes(head[i + 2 : i + 4], "big")
            i += 2 + seg
    return None


def _size_of(path: Path) -> tuple[int, int] | None:
    size = _image_size(path)
    if size is None:
        import cv2

        img = cv2.imread(str(path))
        size = None if img is None else (img.shape[1], img.shape[0])
    return size


def load_coco(json_path: Path, images_dir: Path | None = None, task: str = "detect",
              kpt_shape: tuple[int, int] | None = None) -> Dataset:
    """COCO JSON; images looked up in ``images_dir`` (default: beside the JSON, or ./images, or ../images).

    For ``task`` segment / pose / obb each annotation must carry the task's field (see
    :func:`~unideploy.tools.evaluate.labels.annotation_extras`); one that does not is dropped with a warning.
    """
    try:
        coco = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"{json_path}: expected a COCO instances JSON, could not read it ({e})") from None
    if not isinstance(coco, dict) or "images" not in coco or "categories" not in coco:
        raise SourceError(f"{json_path}: expected a COCO instances JSON with 'images' and 'categories', got other JSON")
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    cat_to_idx = {c["id"]: i for i, c in enumerate(cats)}
    names = {i: c["name"] for i, c in enumerate(cats)}
    if task == "pose" and kpt_shape is None:
        kp_names = next((c["keypoints"] for c in cats if c.get("keypoints")), None)
        kpt_shape = (len(kp_names), 3) if kp_names else None
    if images_dir is None:
        for cand in (json_path.parent / "images", json_path.parent, json_path.parent.parent / "images"):
            first = coco["images"][0]["file_name"] if coco["images"] else ""
            if (cand / first).is_file():
                images_dir = cand
                break
        else:
            images_dir = json_path.parent
    by_image: dict[int, list] = {}
    warnings: list[str] = []
    for a in coco.get("annotations", []):
        by_image.setdefault(a["image_id"], []).append(a)
    samples = []
    for im in sorted(coco["images"], key=lambda m: m["file_name"]):
        p = images_dir / im["file_name"]
        if not p.is_file():
            warnings.append(f"{p}: image listed in the annotations is missing; skipped")
            continue
        w, h = int(im["width"]), int(im["height"])
        boxes, cls, extras, areas, crowd = [], [], [], [], []
        for a in by_image.get(im["id"], []):
            if a["category_id"] not in cat_to_idx:
                warnings.append(f"{im['file_name']}: unknown category_id {a['category_id']}; box dropped")
                continue
            try:
                extra = annotation_extras(a, task, kpt_shape) if not a.get("iscrowd", 0) or task == "segment" else None
            except LabelError as e:
                warnings.append(f"{im['file_name']}: annotation {a.get('id')}: {e}; dropped")
                continue
            x, y, bw, bh = a["bbox"]
            boxes.append([x, y, x + bw, y + bh])
            cls.append(cat_to_idx[a["category_id"]])
            extras.append(extra)
            areas.append(float(a["area"]) if "area" in a else None)
            crowd.append(bool(a.get("iscrowd", 0)))
        sample = Sample(p, w, h, np.array(boxes, np.float32).reshape(-1, 4), np.array(cls, np.int64),
                        extras if task != "detect" else None, areas, np.array(crowd, bool))
        samples.append(_clip(sample, warnings))
    return Dataset(samples, names, warnings, str(json_path), task, kpt_shape)


def _clip(s: Sample, warnings: list[str]) -> Sample:
    if len(s.xyxy):
        clipped = s.xyxy.copy()
        np.clip(clipped[:, 0::2], 0, s.width, out=clipped[:, 0::2])
        np.clip(clipped[:, 1::2], 0, s.height, out=clipped[:, 1::2])
        if not np.allclose(clipped, s.xyxy, atol=0.5):
            warnings.append(f"{s.path.name}: box outside the {s.width}x{s.height} image; clipped")
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        if not keep.all():
            warnings.append(f"{s.path.name}: {int((~keep).sum())} empty box(es) after clipping; dropped")
        s.xyxy = clipped
        s.select(keep)
    return s


def _labels_dir_for(images_dir: Path) -> Path:
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir


def load_yolo_yaml(yaml_path: Path, split: str = "val", task: str | None = None) -> Dataset:
    """Ultralytics data.yaml: the ``split`` images and their YOLO txt labels (images/ -> labels/).

    ``task`` says how to read the label lines (see :mod:`unideploy.tools.evaluate.labels`); None: "pose" when the
    data.yaml has ``kpt_shape``, else "detect". ``kpt_oks_sigmas`` in the data.yaml is kept for keypoint mAP.
    """
    import yaml

    try:
        cfg = yaml.safe_load(yaml_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SourceError(f"{yaml_path}: expected an Ultralytics data.yaml, could not read it ({e})") from None
    if split not in cfg or "names" not in cfg:
        raise SourceError(f"{yaml_path}: expected keys '{split}' and 'names' in the data.yaml, got {sorted(cfg)}")
    names = cfg["names"]
    names = dict(enumerate(names)) if isinstance(names, list) else {int(k): str(v) for k, v in names.items()}
    root = Path(cfg.get("path") or ".")
    if not root.is_absolute():
        root = (yaml_path.parent / root).resolve()
    entries = cfg[split] if isinstance(cfg[split], list) else [cfg[split]]
    files: list[Path] = []
    for e in entries:
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            files += [(root / line.strip()).resolve() for line in p.read_text().splitlines() if line.strip()]
        else:
            raise SourceError(f"{yaml_path}: '{split}' points to {p}, which is not a folder or a .txt list")
    if not files:
        raise SourceError(f"{yaml_path}: expected images in the '{split}' split, found none")
    kpt_shape = None
    if cfg.get("kpt_shape") is not None:
        try:
            k, d = (int(v) for v in cfg["kpt_shape"])
            if k < 1 or d not in (2, 3):
                raise ValueError
        except (TypeError, ValueError):
            raise SourceError(f"{yaml_path}: expected kpt_shape [keypoints, 2 or 3], got {cfg['kpt_shape']!r}") from None
        kpt_shape = (k, d)
    task = task or ("pose" if kpt_shape else "detect")
    if task == "pose" and kpt_shape is None:
        raise SourceError(f"{yaml_path}: a pose data set needs kpt_shape [keypoints, 2 or 3] in its data.yaml")
    sigmas = cfg.get("kpt_oks_sigmas")
    warnings: list[str] = []
    samples = []
    nc = len(names)
    for f in sorted(files, key=lambda q: q.name):
        if not f.is_file():
            warnings.append(f"{f}: image listed in the data set is missing; skipped")
            continue
        size = _size_of(f)
        if size is None:
            warnings.append(f"{f}: cannot read the image size; skipped")
            continue
        w, h = size
        label = _labels_dir_for(f.parent) / (f.stem + ".txt")
        boxes, cls, extras = [], [], []
        if not label.is_file():
            warnings.append(f"{f.name}: no label file {label.name}; counted as an image with no objects")
        else:
            for n, line in enumerate(label.read_text().splitlines(), 1):
                vals = line.split()
                if not vals:
                    continue
                try:
                    c, box, extra = parse_line(vals, task, w, h, kpt_shape)
                except LabelError as e:
                    warnings.append(f"{label.name}:{n}: {e}, got {line.strip()[:80]!r}; dropped")
                    continue
                if not 0 <= c < nc:
                    warnings.append(f"{label.name}:{n}: class id {c} is not in 0..{nc - 1}; dropped")
                    continue
                boxes.append(box)
                cls.append(c)
                extras.append(extra)
        sample = Sample(f, w, h, np.array(boxes, np.float32).reshape(-1, 4), np.array(cls, np.int64),
                        extras if task in ("segment", "pose", "obb") else None)
        samples.append(_clip(sample, warnings))
    return Dataset(samples, names, warnings, str(yaml_path), task, kpt_shape,
                   [float(v) for v in sigmas] if sigmas else None)


def load_dataset(data: str | Path, images: str | Path | None = None, split: str = "val", task: str | None = None,
                 kpt_shape: tuple[int, int] | None = None) -> Dataset:
    """A labelled data set from a COCO JSON (+ images folder) or an Ultralytics data.yaml.

    Args:
        data: the COCO JSON or data.yaml. images: image folder of a COCO JSON (default: found beside it).
        split: the data.yaml split. task: "detect", "segment", "pose" or "obb" (how labels are read; None:
            detect, or pose for a data.yaml with ``kpt_shape``). kpt_shape: keypoints of a COCO JSON pose set
            (default: from its categories' ``keypoints``).

    Raises:
        SourceError: the path is missing or of an unknown kind.
    """
    from unideploy.tools.evaluate.labels import TASKS

    if task is not None and task not in TASKS:
        raise SourceError(f"labels can be read for the tasks {', '.join(TASKS)}; got task {task!r}")
    p = Path(data)
    if not p.exists():
        raise SourceError(f"{p}: expected a COCO JSON, a data.yaml or a class-per-folder image directory; no such path")
    if p.suffix.lower() == ".json":
        return load_coco(p, Path(images) if images else None, task or "detect", kpt_shape)
    if p.suffix.lower() in (".yaml", ".yml"):
        return load_yolo_yaml(p, split, task)
    raise SourceError(f"{p}: expected a COCO .json or an Ultralytics .yaml data set, got {p.suffix or 'a folder'}")
