"""Mask outlines for ``--save-txt``: every contour joined into one, as Ultralytics' ``masks2segments``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from unideploy.core.ops.masks import mask_to_polygon


def _blobs(rng: np.random.Generator) -> np.ndarray:
    m = np.zeros((60, 80), np.uint8)
    for _ in range(rng.integers(1, 6)):
        cv2.circle(m, (int(rng.integers(0, 70)), int(rng.integers(0, 50))), int(rng.integers(1, 8)), 1, -1)
    return m


def test_outlines_equal_ultralytics_masks2segments():
    pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from ultralytics.utils.ops import masks2segments

    rng = np.random.default_rng(0)
    masks = np.stack([_blobs(rng) for _ in range(200)])
    several = 0
    for m, ref_all, ref_big in zip(masks, masks2segments(masks), masks2segments(masks, strategy="largest")):
        several += len(cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]) > 1
        assert np.array_equal(mask_to_polygon(m.astype(bool)), ref_all)
        assert np.array_equal(mask_to_polygon(m.astype(bool), "largest"), ref_big)
    assert several > 100  # most masks have several pieces, so the joining is exercised


def test_empty_mask_and_bad_strategy():
    assert mask_to_polygon(np.zeros((4, 4), bool)).shape == (0, 2)
    with pytest.raises(ValueError, match="strategy must be 'all' or 'largest', got 'x'"):
        mask_to_polygon(np.ones((4, 4), bool), "x")
