"""Flags shared by several subcommands."""

from __future__ import annotations

import argparse


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.onnx, OpenVINO .xml or its folder)")
    p.add_argument("--backend", default=None, help="runtime: onnxruntime, openvino, ... (default: by file type)")
    p.add_argument("--device", default=None, help="device, e.g. cpu, cuda:0, CPU, GPU, AUTO")
    p.add_argument("--imgsz", default=None, help="input size for dynamic models: 640 or 480,640")
    p.add_argument("--batch", type=int, default=None, help="images per inference call (dynamic-batch models)")
    p.add_argument("--family", default=None, help="force the model family adapter (default: recognised)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's choice)")


def predictor_kwargs(args: argparse.Namespace) -> dict:
    kw = dict(backend=args.backend, device=args.device, imgsz=args.imgsz, batch=args.batch, family=args.family)
    if args.threads:
        kw["threads"] = args.threads
    return kw
