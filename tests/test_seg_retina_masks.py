"""``retina_masks=False``: Ultralytics' default mask path (``process_mask`` at the model input size) brought to the
image size as Ultralytics' plotting maps it (``scale_masks`` of the 0/1 mask, > 0.5).

The arithmetic is checked against Ultralytics' own functions on random prototypes, boxes and sizes; the option's
validation and its command-line flags here too. Parity with Ultralytics ``predict`` on an exported model is in
``test_task_parity.py`` (its session model), YOLOv5-seg in ``test_family_yolov5_seg.py``, the device path in
``test_gpu_tasks.py``.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from unideploy.core.errors import OptionError
from unideploy.core.ops.masks import assemble_masks_input
from unideploy.core.options import PostprocessOptions

#: (model input, original image) (height, width): square and rectangular inputs, images smaller, larger, odd
CASES = [((128, 128), (96, 160)), ((128, 128), (200, 120)), ((128, 128), (21, 37)), ((128, 160), (517, 300)),
         ((160, 128), (333, 701)), ((128, 128), (128, 128)), ((96, 96), (1, 300)),
         ((640, 640), (200, 300)), ((128, 160), (96, 300))]  # the last two: many bilinear weights of exactly 0.5


def _random_case(rng: np.random.Generator, input_hw: tuple[int, int], n: int = 30):
    hi, wi = input_hw
    protos = rng.normal(size=(8, hi // 4, wi // 4)).astype(np.float32)
    protos = np.stack([cv2.GaussianBlur(p, (0, 0), 1.5) for p in protos])  # smooth, like real prototypes
    coeffs = rng.normal(size=(n, 8)).astype(np.float32) * 3
    xy = rng.uniform(-10, [wi, hi], size=(n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, [wi / 2, hi / 2], size=(n, 2))], 1).astype(np.float32)
    boxes[0] = [-5, -5, wi + 5, hi + 5]  # past every edge (Ultralytics' boxes are not clipped before process_mask)
    boxes[1] = [10.5, 10.5, 10.7, 30]  # narrower than one pixel
    return protos, coeffs, boxes


@pytest.mark.parametrize("input_hw,shape", CASES, ids=[f"{i[0]}x{i[1]}-{s[0]}x{s[1]}" for i, s in CASES])
def test_masks_equal_ultralytics_process_mask_then_scale_masks(input_hw, shape):
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("ultralytics.utils.ops")

    protos, coeffs, boxes = _random_case(np.random.default_rng(sum(shape)), input_hw)
    masks, nonempty = assemble_masks_input(protos, coeffs, boxes, input_hw, shape)
    ref_in = ops.process_mask(torch.from_numpy(protos), torch.from_numpy(coeffs), torch.from_numpy(boxes), input_hw,
                              upsample=True)
    ref = (ops.scale_masks(ref_in[None].float(), shape)[0] > 0.5).numpy()
    assert masks.dtype == bool and masks.shape == ref.shape == (len(coeffs), *shape)
    np.testing.assert_array_equal(nonempty, ref_in.flatten(1).amax(1).numpy() > 0)
    assert 0 < nonempty.sum() < len(nonempty) or shape[0] == 1, "the case should have empty and non-empty masks"
    # the same float32 arithmetic: 0 differing pixels measured (224 size pairs); allow one pixel per mask for other
    # torch builds (fused multiply-adds round a weight of 0.5 either way)
    assert (masks != ref).sum() <= len(masks), f"{(masks != ref).sum()} of {ref.sum()} mask pixels differ"
    assert ref.sum() > 0


def test_empty_and_degenerate_inputs():
    protos = np.ones((4, 8, 8), np.float32)
    m, keep = assemble_masks_input(protos, np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), (32, 32),
                                   (40, 50))
    assert m.shape == (0, 40, 50) and keep.shape == (0,)
    boxes = np.array([[5, 5, 5, 20], [40, 40, 50, 50], [0, 0, 32, 32]], np.float32)  # empty, outside, whole input
    m, keep = assemble_masks_input(protos, np.ones((3, 4), np.float32), boxes, (32, 32), (64, 64))
    assert keep.tolist() == [False, False, True] and not m[:2].any() and m[2].all()


def test_a_mask_in_the_letterbox_padding_is_kept_but_empty_on_the_image():
    """Ultralytics judges emptiness at the input size; a mask wholly in the padding maps to nothing."""
    protos = np.ones((1, 8, 8), np.float32)
    boxes = np.array([[0, 0, 32, 4], [0, 12, 32, 20]], np.float32)  # the top padding band; the content
    m, keep = assemble_masks_input(protos, np.ones((2, 1), np.float32), boxes, (32, 32), (16, 64))  # content: rows 12-19
    assert keep.tolist() == [True, True]
    assert not m[0].any() and m[1].any()


@pytest.mark.parametrize("value", ["no", None, 2, [True]])
def test_option_is_a_boolean(value):
    with pytest.raises(OptionError, match=r"retina_masks must be True or False, got"):
        PostprocessOptions(retina_masks=value)


def test_option_default_and_override():
    assert PostprocessOptions().retina_masks is True
    assert PostprocessOptions(retina_masks=np.False_).retina_masks is False
    assert PostprocessOptions().updated(retina_masks=False).to_dict()["retina_masks"] is False


@pytest.mark.parametrize("command", [["predict", "m.onnx", "images/"], ["eval", "m.onnx", "--data", "d.yaml"],
                                     ["compare", "a.onnx", "b.onnx", "--random"],
                                     ["postprocess", "m.onnx", "--input", "out/", "--manifest", "manifest.json"]])
def test_cli_flags(command):
    from unideploy.cli.main import parse_args

    assert parse_args(command).retina_masks is None  # unset: the library default (True)
    assert parse_args([*command, "--no-retina-masks"]).retina_masks is False
    assert parse_args([*command, "--retina-masks"]).retina_masks is True


def test_device_assembly_equals_numpy():
    torch = pytest.importorskip("torch")
    from unideploy.runtime.gpu import tasks

    for input_hw, shape in CASES[:5]:
        protos, coeffs, boxes = _random_case(np.random.default_rng(7), input_hw)
        want, want_keep = assemble_masks_input(protos, coeffs, boxes, input_hw, shape)
        got, keep = tasks.assemble_masks_input_tensor(*map(torch.from_numpy, (protos, coeffs, boxes)), input_hw, shape)
        assert got.dtype == torch.bool and tuple(got.shape) == want.shape
        np.testing.assert_array_equal(keep.numpy(), want_keep)
        assert (got.numpy() != want).sum() <= len(want), (input_hw, shape)


def test_device_assembly_chunks_give_the_same_masks(monkeypatch):
    torch = pytest.importorskip("torch")
    from unideploy.runtime.gpu import tasks

    protos, coeffs, boxes = map(torch.from_numpy, _random_case(np.random.default_rng(8), (64, 64), n=5))
    whole = tasks.assemble_masks_input_tensor(protos, coeffs, boxes, (64, 64), (50, 90))
    monkeypatch.setattr(tasks, "MASK_CHUNK_PIXELS", 2 * (64 * 64 + 50 * 90))  # two instances per chunk
    parts = tasks.assemble_masks_input_tensor(protos, coeffs, boxes, (64, 64), (50, 90))
    assert torch.equal(parts[0], whole[0]) and torch.equal(parts[1], whole[1])
