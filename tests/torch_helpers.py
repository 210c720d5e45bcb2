"""Helpers for the PyTorch backend tests: a random-weight YOLOv8n saved the way Ultralytics saves it,
and the same weights exported to ONNX, TorchScript (by Ultralytics) and a ``torch.export`` archive."""

from __future__ import annotations

import json
import os
from pathlib import Path

IMGSZ = 320


def build_torch_models(out_dir: Path, imgsz: int = IMGSZ) -> dict[str, Path]:
    """YOLOv8n (random weights made to give varied scores) as .pt, .onnx, .torchscript and .pt2.

    The .pt is written by ``YOLO.save`` (fp16 weights, like every Ultralytics checkpoint) with
    ``train_args`` as a trained checkpoint carries them; the other files are exported from that .pt,
    so every file holds the same (fp16-rounded) weights.
    """
    import torch
    from ultralytics import YOLO

    from conftest import randomise

    cwd = os.getcwd()
    os.chdir(out_dir)
    try:
        torch.manual_seed(0)
        model = YOLO("yolov8n.yaml")
        randomise(model.model, imgsz)
        model.ckpt = {"train_args": {"imgsz": imgsz, "task": "detect", "model": "yolov8n.yaml"}, "epoch": -1}
        pt = out_dir / "yolov8n.pt"
        model.save(str(pt))
        ref = YOLO(str(pt))
        onnx = Path(ref.export(format="onnx", imgsz=imgsz, simplify=True, verbose=False))
        ts = Path(YOLO(str(pt)).export(format="torchscript", imgsz=imgsz, verbose=False))
        # torch.export archive with Ultralytics-style metadata in extra/config.txt
        net = YOLO(str(pt)).model.float().eval()
        net = net.fuse() if hasattr(net, "fuse") else net
        for m in net.modules():
            if type(m).__name__ == "Detect":
                m.export = True
        x = torch.zeros(1, 3, imgsz, imgsz)
        ep = torch.export.export(net, (x,))
        meta = {"names": {str(k): v for k, v in net.names.items()}, "imgsz": [imgsz, imgsz], "stride": 32,
                "task": "detect", "author": "Ultralytics", "batch": 1}
        pt2 = out_dir / "yolov8n.pt2"
        torch.export.save(ep, str(pt2), extra_files={"config.txt": json.dumps(meta)})
        return {"pt": pt, "onnx": onnx, "torchscript": ts, "pt2": pt2}
    finally:
        os.chdir(cwd)
