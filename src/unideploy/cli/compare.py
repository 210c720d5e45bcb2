"""``unideploy compare REF CANDIDATE --data SOURCE``: do two deployments of a model give the same answers?"""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import (
    check_outputs, fraction, non_negative_float, non_negative_int, positive_int, threads,
)

EPILOG = """\
REF and CANDIDATE are MODEL[@backend[:device]], e.g.
  yolov8n.onnx@onnxruntime   yolov8n_openvino_model@openvino:CPU   yolov8n.onnx@onnxruntime:cuda:0

examples:
  unideploy compare yolov8n.onnx yolov8n_openvino_model@openvino --data images/ --samples 50
  unideploy compare yolov8n.onnx yolov8n_int8.onnx --data images/ --level task --json report.json
  unideploy compare m.onnx m.onnx@onnxruntime:cuda:0 --random --samples 4 --layers
  unideploy compare m.onnx m_openvino_model@openvino:CPU --data images/ --cand-option precision=f32

tensor-level limits follow the precision the looser side computes in (fp32: atol/rtol 1e-3, fp16: 1e-2,
bf16: 5e-2, e.g. OpenVINO on CPUs with native bf16); --atol / --rtol set them for every precision.

exit status: 0 when every check passes, 1 when one fails (or on an error).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="check that a converted / quantised model still gives the same answers",
                       description="Run a reference and a candidate model on the same inputs and compare raw "
                                   "outputs (tensor level) and detections / classes (task level).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", metavar="REF", help="reference: MODEL[@backend[:device]]")
    p.add_argument("candidate", metavar="CANDIDATE", help="candidate: MODEL[@backend[:device]]")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="SOURCE", help="image file, folder, glob (quote it) or video")
    src.add_argument("--random", action="store_true", help="feed random-noise images instead of --data")
    p.add_argument("--samples", type=positive_int, default=None, help="compare at most N images (default: all; 8 with --random)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random inputs (default 0)")
    p.add_argument("--level", choices=("all", "tensor", "task"), default="all",
                   help="what to compare: raw outputs, detections/classes, or both (default all)")
    g = p.add_argument_group("tensor-level thresholds")
    g.add_argument("--atol", type=non_negative_float, default=None,
                   help="absolute tolerance (default by compute precision: 1e-3 fp32, 1e-2 fp16, 5e-2 bf16)")
    g.add_argument("--rtol", type=non_negative_float, default=None,
                   help="relative tolerance (default by compute precision: 1e-3 fp32, 1e-2 fp16, 5e-2 bf16)")
    g.add_argument("--max-fail-pct", type=non_negative_float, default=None,
                   help="most elements allowed outside atol + rtol*|ref|, in percent (default 0.1; 0.5 int8)")
    g.add_argument("--min-cosine", type=fraction, default=0.999, help="lowest per-image cosine similarity (default 0.999)")
    t = p.add_argument_group("task-level settings and thresholds")
    t.add_argument("--conf", type=fraction, default=0.25, help="confidence threshold of the detections (default 0.25)")
    t.add_argument("--iou", type=fraction, default=0.5, help="IoU for two boxes to be the same detection (default 0.5)")
    t.add_argument("--nms-iou", type=fraction, default=0.7, help="NMS IoU threshold of both models (default 0.7)")
    t.add_argument("--max-det", type=positive_int, default=300, help="detections kept per image by both models (default 300)")
    t.add_argument("--retina-masks", action=argparse.BooleanOptionalAction, default=None,
                   help="segmentation masks of both models at the image size (default), or with --no-retina-masks "
                        "Ultralytics' default path (at the model input size, then mapped onto the image)")
    t.add_argument("--max-missed-frac", type=fraction, default=0.05,
                   help="most reference boxes allowed unmatched in the candidate (default 0.05)")
    t.add_argument("--max-extra-frac", type=fraction, default=0.05,
                   help="most candidate boxes allowed unmatched in the reference (default 0.05)")
    t.add_argument("--max-score-delta", type=non_negative_float, default=None,
                   help="largest score change of a matched box (default 0.1; 0.25 int8)")
    t.add_argument("--max-shift-px", type=non_negative_float, default=None,
                   help="largest box-corner shift of a matched box, original-image pixels (default 4; 16 int8)")
    t.add_argument("--min-top1", type=fraction, default=0.99, help="lowest top-1 agreement of classifiers (default 0.99)")
    t.add_argument("--max-prob-delta", type=non_negative_float, default=0.1, help="largest class-probability change (default 0.1)")
    t.add_argument("--min-mask-iou", type=fraction, default=None,
                   help="segmentation: lowest mean mask IoU of matched instances (default 0.95)")
    t.add_argument("--min-mask-iou-p5", type=fraction, default=None,
                   help="segmentation: lowest 5th percentile of the matched instances' mask IoU (default 0.8)")
    t.add_argument("--max-kpt-px", type=non_negative_float, default=None,
                   help="pose: largest keypoint displacement of a matched instance, pixels (default 4)")
    t.add_argument("--min-oks", type=fraction, default=None, help="pose: lowest mean OKS of matched instances (default 0.95)")
    t.add_argument("--min-rotated-iou", type=fraction, default=None,
                   help="obb: lowest mean rotated-box IoU of matched instances (default 0.95)")
    t.add_argument("--max-angle-deg", type=non_negative_float, default=None,
                   help="obb: largest rotation difference of a matched box, degrees (default 3)")
    p.add_argument("--layers", action="store_true",
                   help="ONNX models: compare every intermediate tensor and name the first diverging layer")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="load/backend option for both models, e.g. threads=2 (repeatable)")
    p.add_argument("--ref-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option for the reference only (repeatable)")
    p.add_argument("--cand-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option for the candidate only, e.g. precision=f32 for OpenVINO (repeatable)")
    p.add_argument("--imgsz", default=None, help="input size for dynamic models: 640 or 480,640")
    p.add_argument("--threads", type=threads, default=None, help="runtime threads of each model")
    p.add_argument("--worst", type=non_negative_int, default=5, help="worst images to list (default 5)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the verdict line")
    p.set_defaults(func=run)


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_options(items: list[str], flag: str) -> dict:
    """``["precision=f32", "threads=2"]`` -> ``{"precision": "f32", "threads": 2}``.

    Raises:
        InputError: an item is not KEY=VALUE.

    Example:
        >>> parse_options(["precision=f32", "threads=2"], "--option")
        {'precision': 'f32', 'threads': 2}
    """
    from unideploy.core.errors import InputError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} expects KEY=VALUE (e.g. {flag} precision=f32), got {item!r}")
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


def run(args: argparse.Namespace) -> int:
    from unideploy.tools.compare import compare

    check_outputs(files={"--json": args.json})
    limits = {"atol": args.atol, "rtol": args.rtol, "max_fail_pct": args.max_fail_pct, "min_cosine": args.min_cosine,
              "max_missed_frac": args.max_missed_frac, "max_extra_frac": args.max_extra_frac,
              "max_score_delta": args.max_score_delta, "max_shift_px": args.max_shift_px,
              "min_top1_agreement": args.min_top1, "max_prob_delta": args.max_prob_delta,
              "min_mask_iou": args.min_mask_iou, "min_mask_iou_p5": args.min_mask_iou_p5,
              "max_kpt_px": args.max_kpt_px, "min_oks": args.min_oks, "min_rotated_iou": args.min_rotated_iou,
              "max_angle_deg": args.max_angle_deg}
    options = parse_options(args.option, "--option")
    if args.imgsz:
        options["imgsz"] = args.imgsz
    if args.threads:
        options["threads"] = args.threads
    if args.retina_masks is not None:
        options["retina_masks"] = args.retina_masks
    result = compare(args.ref, args.candidate, args.data, samples=args.samples, random=args.random, seed=args.seed,
                     level=args.level, conf=args.conf, iou=args.iou, nms_iou=args.nms_iou, max_det=args.max_det,
                     layers=args.layers, worst=args.worst, options=options,
                     ref_options=parse_options(args.ref_option, "--ref-option"),
                     cand_options=parse_options(args.cand_option, "--cand-option"),
                     progress=not args.quiet, **{k: v for k, v in limits.items() if v is not None})
    if args.json:
        result.save_json(args.json)
    if args.quiet:
        print(result.table().splitlines()[-1])
    else:
        print(result.table())
        if args.json:
            print(f"saved {args.json}", file=sys.stderr)
    return 0 if result.passed else 1
