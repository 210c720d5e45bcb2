"""``unideploy eval MODEL --data DATA``: COCO mAP (detectors) or top-k accuracy (classifiers)."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import add_model_flags, check_outputs, examples, fraction, positive_int, predictor_kwargs
from unideploy.cli.eval_track import add_tracking_flags, run_tracking, wants_tracking

#: the scorers of ``--metric`` (as :func:`unideploy.tools.evaluate.evaluate`'s ``metric``)
METRICS = ("pycocotools", "ultralytics")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy on a labelled data set (COCO mAP, top-k)",
                       description="Evaluate a model on a COCO JSON + images, an Ultralytics data.yaml (val split), "
                                   "or a folder with one sub-folder per class (classifiers).",
                       epilog=examples("unideploy eval model.onnx --data val/data.yaml",
                                       "unideploy eval model.onnx --data annotations/instances_val.json --images val/ "
                                       "--json report.json",
                                       "unideploy eval model_openvino_model/ --data val/data.yaml --precision fp32"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--data", required=True, help="COCO instances JSON, data.yaml, class-per-folder directory, "
                                                     "or MOTChallenge sequence(s) (tracking)")
    p.add_argument("--images", default=None, help="image folder for a COCO JSON (default: found beside it)")
    p.add_argument("--conf", type=fraction, default=None,
                   help="confidence threshold, 0..1 (default 0.001; 0.1 when tracking)")
    p.add_argument("--iou", type=fraction, default=0.7, help="NMS IoU threshold, 0..1 (default 0.7)")
    p.add_argument("--max-det", type=positive_int, default=300, help="detections per image (default 300)")
    p.add_argument("--multi-label", action="store_true",
                   help="NMS keeps a box once per class scoring over --conf, as Ultralytics val does (default: the "
                        "best class per box, as predict)")
    p.add_argument("--metric", choices=METRICS, default="pycocotools",
                   help="pycocotools (default; masks scored at the image size) or ultralytics (segmentation: boxes "
                        "and masks scored as Ultralytics' SegmentationValidator, masks at a quarter of the input size)")
    p.add_argument("--retina-masks", action=argparse.BooleanOptionalAction, default=None,
                   help="segmentation masks at the image size (default), or with --no-retina-masks Ultralytics' "
                        "default path (at the model input size, then mapped onto the image)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the report as JSON")
    p.add_argument("--save-predictions", metavar="FILE", default=None, help="write the COCO results JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode large JPEGs at 1/2, 1/4 or 1/8 scale, the smallest still >= the model input (changes pixels)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="predict on Ray Data (a local instance, or the cluster at ADDRESS); needs the ray extra")
    p.add_argument("--ray-actors", type=positive_int, default=2, help="with --ray: predictor actors (default 2)")
    add_tracking_flags(p)
    p.set_defaults(func=run)


def format_report(r: dict) -> str:
    lines = []
    if "mAP50-95" in r:
        lines.append(f"{r['model']} on {r['backend']}:{r['device']} — {r['images']} images, {r['images_per_s']:.1f} images/s")
        sections = [("box", r)] + [(k, r[k]) for k in ("mask", "pose", "obb") if isinstance(r.get(k), dict)]
        tag = len(sections) > 1
        for key, m in sections:
            label = f"{key:<5}" if tag else ""
            lines.append(f"  {label}mAP50-95 {m['mAP50-95']:.4f}   mAP50 {m['mAP50']:.4f}   mAP75 {m['mAP75']:.4f}"
                         + (f"   ({m['metric']})" if m.get("metric") else ""))
        width = max([len(n) for n in r["per_class"]] + [5])
        lines.append(f"  {'class':<{width}}  " + "   ".join(f"{k} AP50-95   {k} AP50" if tag else "AP50-95   AP50"
                                                           for k, _ in sections))
        for name in r["per_class"]:
            cells = "   ".join(f"{m['per_class'].get(name, {}).get('AP50-95', 0.0):{len(k) + 8 if tag else 7}.4f}   "
                               f"{m['per_class'].get(name, {}).get('AP50', 0.0):{len(k) + 5 if tag else 4}.4f}"
                               for k, m in sections)
            lines.append(f"  {name:<{width}}  {cells}")
    else:
        lines.append(f"top1 {r.get('top1', 0):.4f}   top5 {r.get('top5', 0):.4f}   images {r.get('images')}")
    return "\n".join(lines)


def _mask_kwargs(args: argparse.Namespace) -> dict:
    """``--retina-masks`` / ``--no-retina-masks`` as a keyword argument, when given."""
    return {} if args.retina_masks is None else {"retina_masks": args.retina_masks}


def run(args: argparse.Namespace) -> int:
    from unideploy.tools.evaluate import evaluate
    from unideploy.core.sinks import atomic_write_json

    if wants_tracking(args):  # a MOTChallenge layout: HOTA / MOTA / IDF1 (cli/eval_track.py)
        return run_tracking(args)
    if args.conf is None:
        args.conf = 0.001
    preds: list = []
    check_outputs(files={"--json": args.json, "--save-predictions": args.save_predictions})
    if args.ray is not None and (args.fast_decode or args.multi_label or args.metric != "pycocotools"):
        from unideploy.core.errors import InputError

        flag = "--fast-decode" if args.fast_decode else "--multi-label" if args.multi_label else "--metric"
        raise InputError(f"{flag} is not available with --ray (the Ray path predicts and scores as predict and "
                         f"pycocotools do); drop one")
    if args.ray is not None:  # scale-out: unideploy.apps.distributed owns this path
        from unideploy.apps.distributed import evaluate as ray_evaluate, init

        init(None if args.ray == "local" else args.ray)
        report = ray_evaluate(args.model, args.data, images=args.images, conf=args.conf, iou=args.iou,
                              max_det=args.max_det, concurrency=args.ray_actors, **predictor_kwargs(args),
                              **_mask_kwargs(args))
        print(format_report(report))
        if args.json:
            atomic_write_json(args.json, report)
        return 1 if report.get("skipped") else 0
    report = evaluate(args.model, args.data, images=args.images, conf=args.conf, iou=args.iou, max_det=args.max_det,
                      progress=not args.quiet, predictions_out=preds, fast_decode=args.fast_decode,
                      multi_label=args.multi_label, metric=args.metric,
                      **predictor_kwargs(args), **_mask_kwargs(args))
    print(format_report(report))
    for w in report.get("warnings", [])[:20]:
        print(f"warning: {w}", file=sys.stderr)
    if len(report.get("warnings", [])) > 20:
        print(f"warning: … {len(report['warnings']) - 20} more label warnings (see --json)", file=sys.stderr)
    for s in report.get("skipped", []):
        print(f"skipped: {s}", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, report)
    if args.save_predictions:
        atomic_write_json(args.save_predictions, preds)
    return 1 if report.get("skipped") else 0
