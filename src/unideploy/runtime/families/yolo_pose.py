"""Ultralytics YOLOv8 / YOLO11 pose estimation (``-pose``).

One output ``(B, 4 + nc + K*D, N)``: centre-x, centre-y, w, h, class scores, then K keypoints of D values (x, y in
input pixels, and a visibility confidence when D = 3); or end-to-end ``(B, M, 6 + K*D)``. ``kpt_shape`` (K, D) comes
from the model's metadata (Ultralytics writes it) or ``spec={"extra": {"kpt_shape": [K, D]}}``. Postprocessing is
Ultralytics' ``PosePredictor``: the detector's NMS, then keypoints mapped back through the letterbox and clipped
(``scale_coords``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unideploy.core.errors import ModelError
from unideploy.core.ops.keypoints import unletterbox_points
from unideploy.core.ops.letterbox import LetterboxInfo, unletterbox_boxes
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Keypoints, Poses
from unideploy.core.spec import ModelSpec
from unideploy.runtime.backends.base import TensorInfo
from unideploy.runtime.families.yolo import YoloAdapter, end2end_rows, yolo_nms

__all__ = ["YoloPoseAdapter", "kpt_shape_of"]


def kpt_shape_of(spec: ModelSpec) -> tuple[int, int] | None:
    """(K, D) from ``spec.extra["kpt_shape"]``, or None when absent.

    Raises:
        ModelError: it is there but not two positive integers with D 2 or 3.
    """
    v = spec.extra.get("kpt_shape")
    if v is None:
        return None
    try:
        k, d = (int(x) for x in v)
    except (TypeError, ValueError):
        k = d = 0
    if k < 1 or d not in (2, 3):
        raise ModelError(f"kpt_shape must be [keypoints, 2 or 3], got {v!r}")
    return k, d


class YoloPoseAdapter(YoloAdapter):
    """Ultralytics ``-pose`` models -> :class:`~unideploy.core.results.Poses`.

    Example:
        >>> import unideploy
        >>> with unideploy.load("yolov8n-pose.onnx") as p:  # doctest: +SKIP
        ...     pose = p("bus.jpg"); pose.keypoints.data.shape
    """

    name = "yolo_pose"
    task = "pose"
    layout = "(B, 4+nc+K*D, N) boxes + class scores + keypoints (kpt_shape [K, D] from the metadata)"

    @classmethod
    def matches(cls, spec: ModelSpec, outputs: Sequence[TensorInfo]) -> bool:
        if spec.task != "pose" or len(outputs) != 1 or len(outputs[0].shape) != 3:
            return False
        return True

    def __init__(self, spec: ModelSpec, outputs: Sequence[TensorInfo] = (), keep=()) -> None:
        super().__init__(spec, outputs, keep)
        kpt = kpt_shape_of(self.spec)
        if kpt is None:
            shapes = ", ".join(f"{o.name}{o.describe()}" for o in outputs) or "unknown outputs"
            raise ModelError(f"pose model: kpt_shape (keypoints, values per keypoint) is not in its metadata "
                             f"(outputs {shapes}); pass spec={{'extra': {{'kpt_shape': [17, 3]}}}} or put "
                             f'{{"extra": {{"kpt_shape": [17, 3]}}}} in the sidecar JSON beside the model')
        self.kpt_shape = kpt

    def postprocess(self, outputs: list[np.ndarray], infos: list[LetterboxInfo],
                    options: PostprocessOptions | None = None) -> list[Poses]:
        o = self.resolve_options(options)
        out = np.asarray(outputs[0], np.float32)
        k, d = self.kpt_shape
        nk = k * d
        e2e = self.spec.end2end if self.spec.end2end is not None else (out.shape[2] == 6 + nk and out.shape[1] != 6 + nk)
        if not e2e and out.shape[1] < 5 + nk:
            raise ModelError(f"pose model: output {tuple(out.shape)} has too few channels for kpt_shape {[k, d]} "
                             f"(expected 4 + classes + {nk})")
        results = []
        for pred, info in zip(out, infos):
            if e2e:
                sel = end2end_rows(pred, o.conf, o.max_det, o.classes)
                boxes, scores, cls, kpts = sel[:, :4].copy(), sel[:, 4], sel[:, 5].astype(np.int64), sel[:, 6:6 + nk]
            else:
                nc = pred.shape[0] - 4 - nk
                boxes, scores, cls, idx = yolo_nms(pred, nc, o.conf, o.iou, o.max_det, o.agnostic, o.classes)
                kpts = pred[4 + nc:, idx].T
            kpts = np.array(kpts, np.float32).reshape(-1, k, d)
            unletterbox_boxes(boxes, info)
            unletterbox_points(kpts, info)
            results.append(Poses(boxes, scores, cls, self.spec.names, info.orig_shape, keypoints=Keypoints(kpts)))
        return results
