"""Typed postprocess options: family defaults, one validation with errors naming the Python argument, and the
family registry (names, aliases, a family registered from outside the package)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

import unideploy
from unideploy.core.errors import ModelError, OptionError
from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.options import GENERIC_DEFAULTS, PostprocessOptions
from unideploy.core.spec import ModelSpec
from unideploy.runtime.families import FAMILIES, get_adapter, list_families, register_adapter
from unideploy.runtime.families.base import Adapter

DEMO = Path(unideploy.__file__).parent / "assets" / "demo" / "shapes_yolov8.onnx"
IMAGES = DEMO.parent / "val" / "images"


@pytest.mark.parametrize("family,expected", [
    ("yolo", GENERIC_DEFAULTS),
    ("rtdetr", GENERIC_DEFAULTS),
    ("yolov5", {"conf": 0.25, "iou": 0.45, "max_det": 300}),
    ("yolox", {"conf": 0.25, "iou": 0.45, "max_det": 300}),
    ("nanodet", {"conf": 0.05, "iou": 0.6, "max_det": 100}),
])
def test_family_postprocess_defaults(family, expected):
    adapter = get_adapter(family)(ModelSpec(imgsz=(320, 320), names={0: "a"}))
    resolved = adapter.resolve_options(None)
    assert {k: getattr(resolved, k) for k in ("conf", "iou", "max_det")} == dict(expected)
    # what the caller set wins over the family default
    assert adapter.resolve_options(PostprocessOptions(iou=0.3)).iou == 0.3


@pytest.mark.parametrize("family", ["yolo", "yolov5", "yolox", "nanodet", "rtdetr", "classify"])
def test_adapters_take_typed_options_only(family):
    """A misspelt keyword is an error, not silently ignored."""
    sig = inspect.signature(get_adapter(family).postprocess)
    assert list(sig.parameters) == ["self", "outputs", "infos", "options"]
    adapter = get_adapter(family)(ModelSpec(imgsz=(64, 64), names={0: "a", 1: "b"}))
    with pytest.raises(TypeError):
        adapter.postprocess([np.zeros((1, 6, 84), np.float32)], [LetterboxInfo((64, 64), (64, 64), (0, 0), (1, 1))],
                            conff=0.3)  # type: ignore[call-arg]


def test_predictor_options_are_validated_once_with_python_names():
    with pytest.raises(OptionError, match=r"^conf must be between 0 and 1, got 2$"):
        unideploy.load(DEMO, conf=2)
    with pytest.raises(OptionError, match=r"^iou must be between 0 and 1"):
        unideploy.load(DEMO, iou=-0.1)
    with pytest.raises(OptionError, match=r"^max_det must be a positive integer, got 0$"):
        unideploy.load(DEMO, max_det=0)
    with pytest.raises(OptionError, match=r"^batch must be a positive integer, got 0$"):
        unideploy.load(DEMO, batch=0)
    with unideploy.load(DEMO) as p:
        n = p.spec.num_classes
        with pytest.raises(OptionError, match=rf"^classes must be class indices 0\.\.{n - 1} of this model, got {n}$"):
            unideploy.load(DEMO, classes=[0, n])
        img = str(next(IMAGES.iterdir()))
        with pytest.raises(OptionError, match="conff is not a postprocess option; valid: agnostic, classes, conf"):
            p(img, conff=0.3)
        with pytest.raises(OptionError, match=r"^conf must be between 0 and 1, got 5$"):
            list(p.stream([img], conf=5))
        with pytest.raises(OptionError, match=r"^classes must be class indices"):
            p.predict_arrays([np.zeros((32, 32, 3), np.uint8)], classes=[n + 3])
        assert p.options == PostprocessOptions()  # nothing set: every threshold is the family's
        assert p.adapter.resolve_options(p.options).iou == 0.7


def test_per_call_options_match_predictor_options():
    img = str(next(IMAGES.iterdir()))
    with unideploy.load(DEMO, conf=0.5, classes=[1, 2]) as p, unideploy.load(DEMO) as q:
        a, b = p(img), q(img, conf=0.5, classes=[1, 2])
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        assert set(a.class_id.tolist()) <= {1, 2}
        streamed = [o.result for o in q.stream([img], conf=0.5, classes=[1, 2])][0]
        np.testing.assert_array_equal(streamed.xyxy, a.xyxy)


def test_family_registry():
    assert list_families() == sorted(FAMILIES.names())
    assert get_adapter("YOLOX") is get_adapter("yolox")  # names are case-insensitive
    with pytest.raises(ModelError, match=r"^unknown model family 'yolov9'; supported families: classify, nanodet"):
        get_adapter("yolov9")

    class Toy(Adapter):
        name = "toy"
        postprocess_defaults = {"conf": 0.9}

    register_adapter("toy", Toy)
    try:
        assert get_adapter("toy") is Toy and "toy" in list_families()
        assert Toy(ModelSpec(imgsz=(8, 8))).resolve_options(None).conf == 0.9
    finally:
        FAMILIES.unregister("toy")
    assert "toy" not in list_families()
