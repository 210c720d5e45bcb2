"""Tiny random-weight models with the output layouts of each model family, exported to ONNX.

Each model is a small strided-conv backbone with the family's head in export form, so the ONNX file has exactly
the layout a real export has (YOLOv5 ``Detect`` in export mode, YOLOX head with or without
``decode_in_inference``, NanoDet-Plus ``_forward_onnx``, RT-DETR query outputs). The reference implementations of
each family's preprocessing and postprocessing live in the test modules, written after the upstream code.
torch is imported lazily: these helpers are only used by tests that ``importorskip("torch")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unideploy.testing import scene


def _torch():
    import torch

    return torch


def make_backbone(levels: int, ch: int = 24, in_scale: float = 1.0, mean: Sequence[float] = (0, 0, 0),
                  std: Sequence[float] = (1, 1, 1), imgsz: tuple[int, int] = (256, 320)):
    """Strided convs: features at strides 8, 16, 32 (, 64). ``in_scale``/mean/std undo the family's input scaling.

    A fixed random map is added to every feature level, so that cells with identical input (padding, flat
    regions) still get distinct scores: exact ties would make the order of equal scores, which no two sort
    implementations agree on, decide NMS.
    """
    torch = _torch()
    nn = torch.nn

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("m", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("s", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
            self.in_scale = in_scale

            def block(cin, cout):
                return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.SiLU())

            self.stem = nn.Sequential(block(3, ch), block(ch, ch), block(ch, ch))
            self.down = nn.ModuleList([block(ch, ch) for _ in range(levels - 1)])
            g = torch.Generator().manual_seed(123)
            for i in range(levels):
                s = 8 * 2**i
                self.register_buffer(f"pos{i}", torch.randn(1, ch, -(-imgsz[0] // s), -(-imgsz[1] // s), generator=g))

        def forward(self, x):
            x = (x * self.s + self.m) * self.in_scale  # back to 0..1 whatever the family's normalisation
            f = self.stem(x)
            feats = [f]
            for d in self.down:
                f = d(f)
                feats.append(f)
            return [f + getattr(self, f"pos{i}") for i, f in enumerate(feats)]

    return Backbone()


def calibrate(model, imgsz: tuple[int, int], to_input) -> None:
    """Set BatchNorm statistics from a train-mode pass over generated scenes (random init vanishes otherwise)."""
    torch = _torch()
    rng = np.random.default_rng(11)
    x = torch.from_numpy(np.stack([to_input(scene(rng, *imgsz)) for _ in range(4)]))
    model.eval()  # only the BatchNorm layers in training mode: heads may need targets when training
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
            mod.train()
    with torch.no_grad():
        model(x)
    model.eval()


def export_onnx(model, imgsz: tuple[int, int], path: Path, output_names: Sequence[str] = ("output0",),
                metadata: dict[str, Any] | None = None) -> Path:
    """torch -> ONNX (TorchScript exporter, opset 17), with string metadata_props."""
    torch = _torch()
    import onnx

    x = torch.zeros(1, 3, *imgsz)
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=list(output_names))
    if metadata:
        m = onnx.load(str(path))
        for k, v in metadata.items():
            p = m.metadata_props.add()
            p.key, p.value = k, v if isinstance(v, str) else json.dumps(v) if isinstance(v, dict) else str(v)
        onnx.save(m, str(path))
    return path


def grid_xy(h: int, w: int):
    torch = _torch()
    yv, xv = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack((xv, yv), 2).float()  # (h, w, 2)


# ----------------------------------------------------------------------------------------- YOLOv5

V5_ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


def yolov5_model(nc: int = 6, obj_bias: float = 0.5, cls_bias: float = 0.0, imgsz=(256, 320)):
    """YOLOv5 ``Detect`` in export mode over a tiny backbone: (B, 3 * cells, 5 + nc), xywh in input pixels."""
    torch = _torch()
    nn = torch.nn

    class V5(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = make_backbone(3, imgsz=imgsz)
            self.na, self.no = 3, 5 + nc
            self.m = nn.ModuleList([nn.Conv2d(24, self.na * self.no, 1) for _ in range(3)])
            self.stride = (8, 16, 32)
            self.anchors = torch.tensor(V5_ANCHORS, dtype=torch.float32).view(3, 3, 2)
            with torch.no_grad():
                for conv in self.m:
                    b = conv.bias.view(self.na, self.no)
                    b[:, 4] += obj_bias
                    b[:, 5:] += cls_bias
                    conv.weight.view(self.na, self.no, -1)[:, 4:] *= 3.0  # spread the scores over (0, 1)

        def forward(self, x):
            z = []
            for i, f in enumerate(self.backbone(x)):
                p = self.m[i](f)
                bs, _, ny, nx = p.shape
                p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
                grid = grid_xy(ny, nx).view(1, 1, ny, nx, 2) - 0.5
                anchor_grid = self.anchors[i].view(1, self.na, 1, 1, 2)  # anchors are in pixels here
                xy, wh, conf = p.sigmoid().split((2, 2, self.no - 4), 4)
                xy = (xy * 2 + grid) * self.stride[i]
                wh = (wh * 2) ** 2 * anchor_grid
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
            return torch.cat(z, 1)

    return V5()


# ------------------------------------------------------------------------------------------ YOLOX

def yolox_model(nc: int = 5, decode: bool = False, p6: bool = False, obj_bias: float = 1.5, cls_bias: float = 0.5,
                imgsz=(256, 320)):
    """YOLOX head (reg, obj.sigmoid(), cls.sigmoid()) over a tiny backbone; ``decode`` = ``decode_in_inference``.

    The input is YOLOX's: BGR 0-255 (no normalisation).
    """
    torch = _torch()
    nn = torch.nn
    strides = (8, 16, 32, 64) if p6 else (8, 16, 32)

    class X(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = make_backbone(len(strides), in_scale=1 / 255, imgsz=imgsz)
            self.reg = nn.ModuleList([nn.Conv2d(24, 4, 1) for _ in strides])
            self.obj = nn.ModuleList([nn.Conv2d(24, 1, 1) for _ in strides])
            self.cls = nn.ModuleList([nn.Conv2d(24, nc, 1) for _ in strides])
            self.decode = decode
            with torch.no_grad():
                for o, c, r in zip(self.obj, self.cls, self.reg):
                    o.bias += obj_bias
                    c.bias += cls_bias
                    r.weight *= 0.3  # keep log-sizes moderate

        def forward(self, x):
            outs, hw = [], []
            for i, f in enumerate(self.backbone(x)):
                out = torch.cat([self.reg[i](f), self.obj[i](f).sigmoid(), self.cls[i](f).sigmoid()], 1)
                hw.append(out.shape[-2:])
                outs.append(out.flatten(start_dim=2))
            out = torch.cat(outs, dim=2).permute(0, 2, 1)
            if not self.decode:
                return out
            grids, strd = [], []
            for (h, w), s in zip(hw, strides):
                grids.append(grid_xy(int(h), int(w)).view(1, -1, 2))
                strd.append(torch.full((1, int(h) * int(w), 1), float(s)))
            grids, strd = torch.cat(grids, 1), torch.cat(strd, 1)
            return torch.cat([(out[..., :2] + grids) * strd, torch.exp(out[..., 2:4]) * strd, out[..., 4:]], -1)

    return X()


# ---------------------------------------------------------------------------------------- NanoDet

NANODET_MEAN = (103.53, 116.28, 123.675)
NANODET_STD = (57.375, 57.12, 58.395)


def nanodet_model(nc: int = 7, reg_max: int = 7, cls_bias: float = -1.0, imgsz=(256, 320)):
    """NanoDet-Plus ``_forward_onnx``: (B, N, nc + 4 * (reg_max + 1)), cls sigmoid, reg raw; strides 8..64.

    The input is NanoDet's: BGR, (x - mean) / std on 0-255 values.
    """
    torch = _torch()
    nn = torch.nn

    class N(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = make_backbone(4, in_scale=1 / 255, mean=NANODET_MEAN, std=NANODET_STD, imgsz=imgsz)
            self.gfl = nn.ModuleList([nn.Conv2d(24, nc + 4 * (reg_max + 1), 1) for _ in range(4)])
            with torch.no_grad():
                for g in self.gfl:
                    g.bias[:nc] += cls_bias
                    g.weight[nc:] *= 3.0  # peaked distance distributions

        def forward(self, x):
            outs = []
            for f, g in zip(self.backbone(x), self.gfl):
                o = g(f)
                cls, reg = o.split([nc, 4 * (reg_max + 1)], dim=1)
                outs.append(torch.cat([cls.sigmoid(), reg], 1).flatten(start_dim=2))
            return torch.cat(outs, dim=2).permute(0, 2, 1)

    return N()


# ----------------------------------------------------------------------------------------- RT-DETR

def rtdetr_model(nc: int = 6, queries: tuple[int, int] = (20, 20), layout: str = "scores", imgsz=(256, 320)):
    """RT-DETR-style query outputs: boxes (sigmoid cx, cy, w, h) and class logits for ``queries`` positions.

    layout "scores": one (B, Q, 4 + nc) output with sigmoid scores (older Ultralytics);
    layout "split": two outputs, boxes (B, Q, 4) and logits (B, Q, nc) (PaddleDetection / lyuwenyu RT-DETR).
    """
    torch = _torch()
    nn = torch.nn

    class R(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = make_backbone(3, imgsz=imgsz)
            self.pool = nn.AdaptiveAvgPool2d(queries)
            self.box = nn.Conv2d(24, 4, 1)
            self.cls = nn.Conv2d(24, nc, 1)
            with torch.no_grad():
                self.cls.weight *= 4.0
                self.cls.bias -= 2.0

        def forward(self, x):
            f = self.pool(self.backbone(x)[0])  # stride 8: the pooling divides it evenly
            boxes = self.box(f).flatten(2).permute(0, 2, 1).sigmoid()
            logits = self.cls(f).flatten(2).permute(0, 2, 1)
            if layout == "split":
                return boxes, logits
            return torch.cat([boxes, logits.sigmoid()], -1)

    return R()


def bgr_to_input(scale: float = 1 / 255, rgb: bool = True, mean=(0, 0, 0), std=(1, 1, 1)):
    """An HWC BGR uint8 image -> CHW float32 network input (for BatchNorm calibration only)."""
    m = np.array(mean, np.float32).reshape(3, 1, 1)
    s = np.array(std, np.float32).reshape(3, 1, 1)

    def f(img: np.ndarray) -> np.ndarray:
        x = (img[..., ::-1] if rgb else img).transpose(2, 0, 1).astype(np.float32) * scale
        return ((x - m) / s).astype(np.float32)

    return f
