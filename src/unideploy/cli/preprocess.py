"""``unideploy preprocess MODEL SOURCE --out DIR``: images -> model input tensors + manifest (stage 1 of 3)."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import add_model_flags, check_outputs, examples, positive_int, predictor_kwargs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="offline stage 1: images -> tensor files + manifest",
        description="Preprocess images exactly as 'predict' would and write one tensor file per image "
        "(batch axis 1) plus manifest.json (source, original size, letterbox, dtype, shape).",
        epilog=examples("unideploy preprocess model.onnx images/ --out tensors/",
                        "unideploy preprocess model.onnx clip.mp4 --out tensors/ --vid-stride 5 --format bin"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(p)
    p.add_argument("source", help="image file, folder, glob pattern (quote it) or video file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the tensor files")
    p.add_argument("--format", default="npy", choices=["npy", "bin"], help="npy (with header) or bin (raw bytes)")
    p.add_argument("--manifest", default=None, metavar="FILE", help="manifest path (default DIR/manifest.json)")
    p.add_argument("--vid-stride", type=positive_int, default=1, help="use every N-th video frame")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was interrupted (or hit a full disk) with the same flags: skip the images "
                        "it finished; the outputs end up as an uninterrupted run's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unideploy.tools.offline import preprocess, read_manifest

    check_outputs(files={"--manifest": args.manifest}, folders={"--out": args.out})
    path = preprocess(
        args.model,
        args.source,
        args.out,
        fmt=args.format,
        manifest=args.manifest,
        vid_stride=args.vid_stride,
        resume=args.resume,
        **predictor_kwargs(args),
    )
    doc = read_manifest(path)
    print(
        f"{len(doc['items'])} tensor(s) {doc['items'][0]['dtype']} {tuple(doc['items'][0]['shape'])} in {args.out}; "
        f"manifest {path}",
        file=sys.stderr,
    )
    for s in doc["skipped"]:
        print(f"  skipped {s['source']}: {s['error']}", file=sys.stderr)
    return 1 if doc["skipped"] else 0
