"""``unideploy eval MODEL --data <MOTChallenge> --tracker bytetrack|botsort``: HOTA, MOTA, IDF1 of tracking.

Not a subcommand of its own: ``cli/eval.py`` adds these flags and hands a MOTChallenge ``--data`` (or any run with
``--tracker``) to :func:`run_tracking`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unideploy.cli.common import check_outputs, predictor_kwargs

__all__ = ["add_tracking_flags", "run_tracking", "wants_tracking"]


def add_tracking_flags(p: argparse.ArgumentParser) -> None:
    """The tracking flags of ``unideploy eval``."""
    g = p.add_argument_group("tracking (--data is a MOTChallenge sequence folder or a folder of them)")
    g.add_argument("--tracker", default=None,
                   help="bytetrack, botsort, or a tracker YAML (default bytetrack when --data is MOTChallenge)")
    g.add_argument("--tracker-config", metavar="FILE", default=None,
                   help="tracker YAML whose keys override the tracker's defaults")
    g.add_argument("--save-mot", metavar="DIR", default=None, help="write each sequence's tracks as DIR/<seq>.txt")


def wants_tracking(args: argparse.Namespace) -> bool:
    """True when the run is a tracking evaluation: ``--tracker`` given, or ``--data`` is a MOTChallenge layout."""
    from unideploy.tools.evaluate.tracking import is_mot_data

    return bool(getattr(args, "tracker", None) or getattr(args, "tracker_config", None)) or is_mot_data(args.data)


def run_tracking(args: argparse.Namespace) -> int:
    """Track every sequence, print HOTA / DetA / AssA / MOTA / IDF1 / IDSW (class-agnostic and per class)."""
    from unideploy.core.errors import InputError
    from unideploy.core.sinks import atomic_write_json
    from unideploy.tools.evaluate.tracking import evaluate_tracking, format_tracking_report

    if getattr(args, "ray", None) is not None:
        raise InputError("--ray evaluates detection data sets; a tracking evaluation (--tracker) runs locally")
    if args.tracker_config is not None and not Path(args.tracker_config).is_file():
        raise InputError(f"--tracker-config expects an existing YAML file, got {args.tracker_config!r}")
    check_outputs(files={"--json": args.json}, folders={"--save-mot": args.save_mot})
    report = evaluate_tracking(args.model, args.data, tracker=args.tracker or "bytetrack",
                               tracker_config=args.tracker_config, conf=args.conf, iou=args.iou, max_det=args.max_det,
                               save_mot=args.save_mot, progress=not args.quiet, **predictor_kwargs(args))
    print(format_tracking_report(report))
    if args.json:
        atomic_write_json(args.json, report)
    if args.save_mot and not args.quiet:
        print(f"saved {args.save_mot}", file=sys.stderr)
    return 0
