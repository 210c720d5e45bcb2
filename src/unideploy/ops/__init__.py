"""Pure numpy/OpenCV operations shared by every adapter: letterbox, box formats, NMS."""

from .boxes import box_iou, clip_boxes, cxcywh_to_xyxy, xyxy_to_xywh
from .letterbox import LetterboxInfo, letterbox, unletterbox_boxes
from .nms import nms

__all__ = [
    "LetterboxInfo",
    "box_iou",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "letterbox",
    "nms",
    "unletterbox_boxes",
    "xyxy_to_xywh",
]
