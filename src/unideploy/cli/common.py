"""Flags shared by several subcommands, the value types that check them, and the checks of output paths.

Every flag is checked by its ``type=`` while the command line is parsed, so a bad value stops the command before
any model is loaded and the parser prints one line naming the flag, what it expects and what it got::

    error: argument --threads: expected a non-negative integer (0: the runtime's choice), got '-3'
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from unideploy.core.precision import PRECISION_NAMES, PRECISIONS

__all__ = [
    "PRECISION_HELP", "add_model_flags", "check_outputs", "class_list", "examples", "fraction", "model_args",
    "non_negative_float", "non_negative_int", "positive_float", "positive_int", "precision", "predictor_kwargs",
    "report_failures", "run_precision", "short_reason", "threads",
]

PRECISION_HELP = PRECISION_NAMES


def _int(text: str, expected: str, low: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse ``type=``)."""
    return _int(text, "a positive integer", 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (argparse ``type=``)."""
    return _int(text, "a non-negative integer", 0)


def threads(text: str) -> int:
    """A thread count: 0 (the runtime's choice) or more (argparse ``type=``)."""
    return _int(text, "a non-negative integer (0: the runtime's choice)", 0)


def _float(text: str, expected: str, ok: Any) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value != value or not ok(value):  # NaN passes no range
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1] (argparse ``type=``)."""
    return _float(text, "a number between 0 and 1", lambda v: 0.0 <= v <= 1.0)


def positive_float(text: str) -> float:
    """A finite number > 0 (argparse ``type=``)."""
    return _float(text, "a positive number", lambda v: 0.0 < v < float("inf"))


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (argparse ``type=``)."""
    return _float(text, "a non-negative number", lambda v: 0.0 <= v < float("inf"))


def class_list(text: str) -> list[int]:
    """Class indices ``"0,2"`` -> ``[0, 2]`` (argparse ``type=``); the model's class count is checked on load."""
    parts = [t.strip() for t in str(text).split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected class indices like 0 or 0,2, got {text!r}")
    return [int(p) for p in parts]


def precision(text: str) -> str:
    """A precision name as the canonical spelling: ``f32`` -> ``fp32`` (argparse ``type=``)."""
    value = PRECISIONS.get(str(text).strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected {PRECISION_HELP}, got {text!r}")
    return value


def run_precision(text: str) -> str:
    """A precision a runtime can be asked to compute in: fp32, fp16 or bf16, canonical (argparse ``type=``)."""
    value = PRECISIONS.get(str(text).strip().lower())
    if value is None or value == "int8":
        why = " (an int8 model is made by 'unideploy quantize', not chosen at run time)" if value else ""
        raise argparse.ArgumentTypeError(f"expected fp32, fp16 or bf16 (f32 and f16 are aliases){why}, got {text!r}")
    return value


def examples(*lines: str) -> str:
    """The ``examples:`` block that ends a subcommand's ``--help``."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n"


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The flags that open a model (as :func:`unideploy.load`'s arguments), each checked while parsing."""
    p.add_argument("model", help="model file (.onnx, OpenVINO .xml or its folder)")
    p.add_argument("--backend", default=None, help="runtime: onnxruntime, openvino, ... (default: by file type)")
    p.add_argument("--device", default=None, help="device, e.g. cpu, cuda:0, CPU, GPU, AUTO")
    p.add_argument("--imgsz", default=None, help="input size for dynamic models: 640 or 480,640")
    p.add_argument("--batch", type=positive_int, default=None, help="images per inference call (dynamic-batch models)")
    p.add_argument("--family", default=None, help="force the model family adapter (default: recognised)")
    p.add_argument("--threads", type=threads, default=None, help="runtime threads (default 0: the runtime's choice)")
    p.add_argument("--model-sha256", action="append", default=None, metavar="[NAME=]DIGEST",
                   help="refuse the model unless its SHA-256 is DIGEST; NAME=DIGEST pins a file beside it "
                        "(an IR's .bin, external data); repeatable")
    p.add_argument("--precision", type=run_precision, default=None, metavar="fp32|fp16|bf16",
                   help="inference precision where the runtime chooses it (torch; OpenVINO's INFERENCE_PRECISION_HINT, "
                        "whose CPU default may be bf16); f32 and f16 are aliases; ONNX Runtime runs the model "
                        "file's own precision")
    p.add_argument("--trust-pickle", action="store_true",
                   help="fully unpickle .pt checkpoints the safe loader refuses (runs any code in the file)")
    p.add_argument("--hint", choices=("latency", "throughput"), default=None,
                   help="runtime scheduling where it has one (OpenVINO, ONNX Runtime CPU): latency = one run at a "
                        "time over every core; throughput = several runs in flight (default: throughput for "
                        "predict/eval over files, latency otherwise); outputs are the same")


def model_args(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags of :func:`add_model_flags` as :func:`unideploy.predict`'s keyword arguments (all of them)."""
    return {
        "backend": args.backend, "device": args.device, "imgsz": args.imgsz, "batch": args.batch,
        "family": args.family, "threads": args.threads, "sha256": getattr(args, "model_sha256", None),
        "precision": getattr(args, "precision", None), "trust_pickle": getattr(args, "trust_pickle", False),
        "hint": getattr(args, "hint", None),
    }


def predictor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags as keyword arguments for :func:`unideploy.load`, unset ones left out."""
    from unideploy.tools.predict import load_kwargs

    return load_kwargs(**model_args(args))


def check_outputs(files: dict[str, Any] | None = None, folders: dict[str, Any] | None = None) -> None:
    """Check output paths before any work starts: a FILE flag must not name a folder, a DIR flag not a file, and
    neither may sit under an existing file or in a folder that cannot be written.

    Args:
        files: ``{"--save-json": path}``: flags that name a file (None values are skipped).
        folders: ``{"--save-img": path}``: flags that name a folder.

    Raises:
        InputError: one line naming the flag, what it expects and the path given.
    """
    from unideploy.core.errors import InputError

    for kind, flags in (("file", files or {}), ("folder", folders or {})):
        for flag, value in flags.items():
            if value is None or value == "" or hasattr(value, "add"):
                continue
            path = Path(value)
            if kind == "file" and path.is_dir():
                raise InputError(f"{flag} expects a file name, got {str(value)!r}, which is a folder")
            if kind == "folder" and path.exists() and not path.is_dir():
                raise InputError(f"{flag} expects a folder, got {str(value)!r}, which is an existing file")
            parent = path.resolve().parent
            while not parent.exists():
                parent = parent.parent
            if not parent.is_dir():
                raise InputError(f"{flag} expects a path it can create, got {str(value)!r}: {parent} is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"{flag} expects a writable location, got {str(value)!r}: {parent} is not writable")


def short_reason(name: str, why: str) -> str:
    """``why`` without a leading copy of the item's name or path (``"a/b.jpg: expected ..."`` -> ``"expected ..."``)."""
    head, sep, rest = why.partition(": ")
    if sep and (head == name or Path(head).name == Path(name).name or head.endswith(name)):
        return rest
    return why


def report_failures(failures: list[tuple[str, str]]) -> int:
    """Print the skipped items (``name: why``, the name once) on stderr; the exit status: 1 when any was skipped."""
    if not failures:
        return 0
    print(f"{len(failures)} file(s) skipped:", file=sys.stderr)
    for name, why in failures:
        print(f"  {name}: {short_reason(name, why)}", file=sys.stderr)
    return 1
