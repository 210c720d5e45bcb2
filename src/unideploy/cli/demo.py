"""``unideploy demo``: the bundled model on every installed backend (see unideploy.apps.demo)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the bundled demo model on every installed backend",
                       description="Predict, evaluate and time the bundled shapes detector on every installed "
                                   "backend; writes annotated images, report.json and report.md.")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--backends", default=None, help="comma-separated backends (default: all installed)")
    p.add_argument("--model", default=None, help="another model instead of the bundled one")
    p.add_argument("--data", default=None, help="another data set (data.yaml / COCO JSON) for --model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unideploy.apps.demo import run_demo

    run_demo(args.out, model=args.model, data=args.data,
             backends=args.backends.split(",") if args.backends else None)
    return 0
