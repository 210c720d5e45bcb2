"""Shared by the export and quantize tests: a tiny detector built in torch, in the YOLO output layout."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


class TinyDetector(torch.nn.Module):
    """A stride-4 detector whose head decodes boxes on a grid built with arange/meshgrid (YOLO output layout)."""

    def __init__(self, nc: int = 3) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.SiLU(),
                                        torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.SiLU(), torch.nn.Conv2d(16, 4 + nc, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        b, _, h, w = y.shape
        gy, gx = torch.meshgrid(torch.arange(h, dtype=y.dtype), torch.arange(w, dtype=y.dtype), indexing="ij")
        grid = torch.stack([gx, gy]).reshape(1, 2, h * w)
        y = y.flatten(2)
        xy = (grid + torch.sigmoid(y[:, :2])) * 4.0
        wh = torch.sigmoid(y[:, 2:4]) * 32.0
        return torch.cat([xy, wh, torch.sigmoid(y[:, 4:])], 1)


SPEC = {"task": "detect", "family": "yolo", "names": {0: "circle", 1: "square", 2: "triangle"}}
