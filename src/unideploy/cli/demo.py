"""``unideploy demo``: the bundled model on every installed backend (see unideploy.apps.demo)."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import check_outputs, examples


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the bundled demo model on every installed backend",
                       description="Predict, evaluate and time the bundled shapes detector on every installed "
                                   "backend, then the bundled segmentation, pose and oriented-box models (one "
                                   "row each); writes annotated images, report.json and report.md.",
                       epilog=examples("unideploy demo", "unideploy demo --out /tmp/demo --backends onnxruntime",
                                       "unideploy demo --model my.onnx --data val/data.yaml"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--backends", default=None, help="comma-separated backends (default: all installed)")
    p.add_argument("--model", default=None, help="another model instead of the bundled one")
    p.add_argument("--data", default=None, help="another data set (data.yaml / COCO JSON) for --model")
    p.add_argument("--no-tasks", action="store_true",
                   help="skip the rows of the bundled segmentation, pose and oriented-box models")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unideploy.apps.demo import run_demo

    check_outputs(folders={"--out": args.out})
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    run_demo(args.out, model=args.model, data=args.data,
             backends=args.backends.split(",") if args.backends else None, log=log, tasks=not args.no_tasks)
    return 0
