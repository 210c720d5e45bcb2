"""Flags shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.onnx, OpenVINO .xml or its folder)")
    p.add_argument("--backend", default=None, help="runtime: onnxruntime, openvino, ... (default: by file type)")
    p.add_argument("--device", default=None, help="device, e.g. cpu, cuda:0, CPU, GPU, AUTO")
    p.add_argument("--imgsz", default=None, help="input size for dynamic models: 640 or 480,640")
    p.add_argument("--batch", type=int, default=None, help="images per inference call (dynamic-batch models)")
    p.add_argument("--family", default=None, help="force the model family adapter (default: recognised)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's choice)")
    p.add_argument("--model-sha256", action="append", default=None, metavar="[NAME=]DIGEST",
                   help="refuse the model unless its SHA-256 is DIGEST; NAME=DIGEST pins a file beside it "
                        "(an IR's .bin, external data); repeatable")
    p.add_argument("--precision", default=None, metavar="fp32|fp16|bf16",
                   help="inference precision where the runtime chooses it (torch; OpenVINO's INFERENCE_PRECISION_HINT, "
                        "whose CPU default may be bf16); ONNX Runtime runs the model file's own precision")
    p.add_argument("--trust-pickle", action="store_true",
                   help="fully unpickle .pt checkpoints the safe loader refuses (runs any code in the file)")


def model_args(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags of :func:`add_model_flags` as :func:`unideploy.predict`'s keyword arguments (all of them)."""
    return {
        "backend": args.backend, "device": args.device, "imgsz": args.imgsz, "batch": args.batch,
        "family": args.family, "threads": args.threads, "sha256": getattr(args, "model_sha256", None),
        "precision": getattr(args, "precision", None), "trust_pickle": getattr(args, "trust_pickle", False),
    }


def predictor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags as keyword arguments for :func:`unideploy.load`, unset ones left out."""
    from unideploy.tools.predict import load_kwargs

    return load_kwargs(**model_args(args))


def report_failures(failures: list[tuple[str, str]]) -> int:
    """Print the skipped items (``name: why``) on stderr; the exit status: 1 when any was skipped, else 0."""
    if not failures:
        return 0
    print(f"{len(failures)} file(s) skipped:", file=sys.stderr)
    for name, why in failures:
        print(f"  {name}: {why}", file=sys.stderr)
    return 1
