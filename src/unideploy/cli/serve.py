"""``unideploy serve MODEL``: an HTTP detection endpoint on Ray Serve (needs the ``ray`` extra)."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import (
    add_model_flags, examples, fraction, non_negative_float, positive_float, positive_int, predictor_kwargs,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP endpoint on Ray Serve: images in, detections out (JSON)",
        description="Serve a model over HTTP with Ray Serve: POST /predict takes multipart files, "
        "base64 JSON or a raw image body and answers detections as JSON; concurrent "
        "requests are batched. Needs: pip install 'unideploy[ray]'.",
        epilog=examples("unideploy serve model.onnx --port 8000",
                        "unideploy serve model.onnx --replicas 2 --max-batch-size 16 --host 0.0.0.0",
                        "curl -F file=@bus.jpg http://127.0.0.1:8000/predict"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--conf", type=fraction, default=0.25, help="default confidence threshold (default 0.25)")
    p.add_argument("--iou", type=fraction, default=0.7, help="default NMS IoU threshold (default 0.7)")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0, help="largest request body in MB (default 20)")
    p.add_argument("--max-images", type=positive_int, default=16, help="images per request (default 16)")
    p.add_argument("--max-batch-size", type=positive_int, default=8, help="dynamic batching: images per model call (default 8)")
    p.add_argument("--batch-wait-ms", type=non_negative_float, default=10.0, help="dynamic batching: longest wait (default 10 ms)")
    p.add_argument("--max-queue", type=positive_int, default=64,
                   help="requests a replica holds in flight; more get 503 with Retry-After (default 64)")
    p.add_argument("--replicas", type=positive_int, default=1, help="model replicas (default 1)")
    p.add_argument("--reload-check", type=non_negative_float, default=0, metavar="SECONDS",
                   help="look at the model file at most this often and use it again when it changed (a file that "
                        "is not a valid model or not the pinned --model-sha256 is refused, the old model kept); "
                        "default 0: read once")
    p.add_argument("--num-cpus", type=non_negative_float, default=1, help="CPUs per replica (default 1)")
    p.add_argument("--num-gpus", type=non_negative_float, default=0, help="GPUs per replica (default 0)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="join this Ray cluster (default: start a local one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unideploy.apps.serving import serve_model
    from unideploy.core.errors import InputError
    from unideploy.core.options import check_fraction

    check_fraction(args.conf, "conf")
    check_fraction(args.iou, "iou")
    sizes = (args.max_upload_mb, args.max_images, args.max_batch_size, args.max_queue, args.replicas)
    if min(sizes) <= 0:
        raise InputError(
            "--max-upload-mb, --max-images, --max-batch-size, --max-queue and --replicas must be positive, got "
            + ", ".join(f"{v:g}" for v in sizes)
        )
    # the same model flags as predict: --model-sha256, --trust-pickle, --precision reach the replicas' load()
    kw = predictor_kwargs(args)
    print(f"serving {args.model} on http://{args.host}:{args.port}/predict (Ctrl-C to stop)", file=sys.stderr)
    serve_model(
        args.model,
        host=args.host,
        port=args.port,
        address=args.ray,
        max_upload_mb=args.max_upload_mb,
        max_images=args.max_images,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000,
        max_queue=args.max_queue,
        num_replicas=args.replicas,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        reload_check_s=args.reload_check,
        conf=args.conf,
        iou=args.iou,
        **{k: v for k, v in kw.items() if v is not None},
    )
    return 0
