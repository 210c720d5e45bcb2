"""Family recognition from output layouts: one family per known layout, a clear error otherwise; family defaults."""

from __future__ import annotations

import numpy as np
import pytest

from unideploy.runtime.backends.base import TensorInfo
from unideploy.core.errors import ModelError
from unideploy.runtime.families import get_adapter, list_families, resolve_adapter
from unideploy.core.spec import ModelSpec, spec_from_metadata

F32 = np.dtype("float32")


def outs(*shapes, names=None):
    names = names or [f"output{i}" for i in range(len(shapes))]
    return [TensorInfo(n, tuple(s), F32) for n, s in zip(names, shapes)]


def spec(nc=None, imgsz=(640, 640), **kw):
    return ModelSpec(imgsz=imgsz, names={i: str(i) for i in range(nc)} if nc else {}, **kw)


CASES = [
    # (id, spec, outputs, family)
    ("yolov8-raw", spec(80), outs((1, 84, 8400)), "yolo"),
    ("yolov8-raw-1class", spec(1), outs((1, 5, 8400)), "yolo"),
    ("yolo26-end2end", spec(80), outs((1, 300, 6)), "yolo"),
    ("yolov8-256x320", spec(80, (256, 320)), outs((1, 84, 1680)), "yolo"),
    ("yolov5", spec(80), outs((1, 25200, 85)), "yolov5"),
    ("yolov5-no-names", spec(), outs((1, 25200, 85)), "yolov5"),
    ("yolov5-1class", spec(1), outs((1, 25200, 6)), "yolov5"),
    ("yolov5-1class-no-names", spec(), outs((1, 25200, 6)), "yolov5"),
    ("yolov5-p6", spec(80, (1280, 1280)), outs((1, 3 * 34000, 85)), "yolov5"),
    ("yolox", spec(80), outs((1, 8400, 85)), "yolox"),
    ("yolox-no-names", spec(imgsz=(416, 416)), outs((1, 3549, 85)), "yolox"),
    ("yolox-1class", spec(), outs((1, 8400, 6)), "yolox"),
    ("yolox-p6-names", spec(80), outs((1, 8500, 85)), "yolox"),
    ("nanodet-plus-320", spec(imgsz=(320, 320)), outs((1, 2125, 112)), "nanodet"),
    ("nanodet-plus-416-names", spec(80, (416, 416)), outs((1, 3598, 112)), "nanodet"),
    ("rtdetr-scores", spec(80), outs((1, 300, 84)), "rtdetr"),
    ("rtdetr-split", spec(), outs((1, 300, 4), (1, 300, 80), names=["boxes", "logits"]), "rtdetr"),
    ("rtdetr-split-logits-first", spec(80), outs((1, 300, 80), (1, 300, 4), names=["logits", "boxes"]), "rtdetr"),
    ("classifier", spec(), outs((1, 1000)), "classify"),
    ("classifier-4d", spec(), outs((1, 1000, 1, 1)), "classify"),
    ("classifier-dynamic-batch", spec(), outs((None, 10)), "classify"),
]


@pytest.mark.parametrize("s,o,family", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_recognised(s, o, family):
    found = [n for n in list_families() if get_adapter(n).matches(s, o)]
    assert found == [family]
    assert resolve_adapter(s, o).name == family


@pytest.mark.parametrize("s,o", [
    (spec(80), outs((1, None, 85))),            # dynamic number of boxes: cannot count anchors
    (spec(), outs((1, 84, 8400))),              # YOLOv8 raw head without class names
    (spec(80), outs((1, 1234, 85))),            # no anchor count matches the input size
    (spec(), outs((1, 300, 84))),               # RT-DETR scores without class names
], ids=["dynamic", "yolov8-no-names", "odd-count", "rtdetr-no-names"])
def test_unrecognised_error_lists_layouts(s, o):
    with pytest.raises(ModelError) as e:
        resolve_adapter(s, o)
    msg = str(e.value)
    assert "\n" not in msg and "--family" in msg and "supported layouts" in msg
    for name in list_families():
        assert f"{name}: " in msg  # every family with the layout it reads


def test_family_flag_wins():
    assert resolve_adapter(spec(), outs((1, 1234, 85)), "yolox").name == "yolox"
    with pytest.raises(ModelError, match="unknown model family 'yolov9'.*supported families: classify"):
        resolve_adapter(spec(), outs((1, 1234, 85)), "yolov9")


def test_family_defaults():
    yolox = get_adapter("yolox")
    s = yolox.default_spec(spec(80))
    assert (s.channel_order, s.scale, s.resize, s.family) == ("bgr", 1.0, "letterbox_topleft", "yolox")
    legacy = yolox.default_spec(spec(80, extra={"legacy": True}))
    assert (legacy.channel_order, legacy.scale, legacy.mean) == ("rgb", 1 / 255, (0.485, 0.456, 0.406))
    kept = yolox.default_spec(spec(80), keep={"channel_order"})  # a field the user set is left alone
    assert kept.channel_order == "rgb" and kept.scale == 1.0
    nano = get_adapter("nanodet").default_spec(spec())
    assert (nano.mean, nano.std, nano.channel_order) == ((103.53, 116.28, 123.675), (57.375, 57.12, 58.395), "bgr")
    cls = get_adapter("classify").default_spec(spec())
    assert (cls.task, cls.resize, cls.extra["crop_fraction"], cls.mean) == ("classify", "crop", 0.875,
                                                                           (0.485, 0.456, 0.406))
    ul = get_adapter("classify").default_spec(spec(extra={"preprocess": "ultralytics"}))
    assert (ul.mean, ul.std, ul.extra["crop_fraction"]) == ((0, 0, 0), (1, 1, 1), 1.0)
    assert get_adapter("yolo").default_spec(spec(80)).resize == "letterbox"  # YOLO: no defaults of its own
    explicit = get_adapter("nanodet").default_spec(spec(resize="letterbox_topleft"))  # a non-generic value stays
    assert explicit.resize == "letterbox_topleft"


def test_ultralytics_metadata_families():
    base = {"author": "Ultralytics", "task": "detect", "names": "{0: 'a'}", "imgsz": "[320, 320]"}
    assert spec_from_metadata(base)["family"] == "yolo"
    rt = spec_from_metadata({**base, "head": "RTDETRDecoder", "description": "Ultralytics rtdetr-l model"})
    assert (rt["family"], rt["resize"], rt["end2end"]) == ("rtdetr", "stretch", True)
    old = spec_from_metadata({**base, "description": "Ultralytics rtdetr-x model trained on coco.yaml"})
    assert old["family"] == "rtdetr"
    cls = spec_from_metadata({**base, "task": "classify"})
    assert (cls["family"], cls["resize"], cls["extra"]["preprocess"]) == ("classify", "crop", "ultralytics")
