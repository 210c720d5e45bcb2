"""Pure numpy/OpenCV operations shared by every adapter: letterbox, box formats, NMS."""

from unideploy.core.ops.boxes import box_iou, clip_boxes, cxcywh_to_xyxy, xyxy_to_xywh
from unideploy.core.ops.letterbox import LetterboxInfo, letterbox, unletterbox_boxes
from unideploy.core.ops.nms import batched_nms, nms

__all__ = [
    "LetterboxInfo",
    "batched_nms",
    "box_iou",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "letterbox",
    "nms",
    "unletterbox_boxes",
    "xyxy_to_xywh",
]
