"""``unideploy postprocess MODEL --input OUTDIR --manifest FILE``: output files -> results (stage 3 of 3)."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import check_outputs, class_list, examples, fraction, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "postprocess",
        help="offline stage 3: output files + manifest -> detections",
        description="Turn the output files of 'unideploy infer' back into detections with the model "
        "family's postprocessing and the manifest of 'unideploy preprocess'.",
        epilog=examples("unideploy postprocess model.onnx --input outputs/run1 --manifest tensors/manifest.json "
                        "--save-json preds.json",
                        "unideploy postprocess model.onnx --input outputs/run1 --manifest tensors/manifest.json "
                        "--conf 0.4 --save-img annotated/"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="model file (class names; outputs when OUTDIR has no outputs.json)")
    p.add_argument("--input", required=True, metavar="OUTDIR", help="output folder written by 'unideploy infer'")
    p.add_argument("--manifest", required=True, metavar="FILE", help="manifest.json written by 'unideploy preprocess'")
    p.add_argument("--family", default=None, help="force the model family adapter (default: recognised)")
    p.add_argument("--backend", default=None, help="backend used to read the outputs when there is no outputs.json")
    p.add_argument("--conf", type=fraction, default=None,
                   help="confidence threshold (default: the model family's; 0.25 for Ultralytics models)")
    p.add_argument("--iou", type=fraction, default=None,
                   help="NMS IoU threshold (default: the model family's; 0.7 Ultralytics, 0.45 YOLOv5/YOLOX)")
    p.add_argument("--max-det", type=positive_int, default=None,
                   help="maximum detections per image (default: the model family's; 300 for most)")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--classes", type=class_list, default=None, help="keep only these class indices, e.g. 0,2")
    p.add_argument("--retina-masks", action=argparse.BooleanOptionalAction, default=None,
                   help="segmentation masks at the image size (default), or with --no-retina-masks Ultralytics' "
                        "default path (at the model input size, then mapped onto the image)")
    p.add_argument("--save-json", metavar="FILE", default=None, help="write COCO results JSON")
    p.add_argument("--save-txt", metavar="DIR", default=None, help="write YOLO txt labels (with confidence)")
    p.add_argument("--save-img", metavar="DIR", default=None, help="write annotated images (sources must be readable)")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was interrupted (or hit a full disk) with the same flags: skip the images "
                        "it finished; the outputs end up as an uninterrupted run's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unideploy.tools.offline import postprocess

    check_outputs(files={"--save-json": args.save_json}, folders={"--save-txt": args.save_txt, "--save-img": args.save_img})
    classes = args.classes
    res = postprocess(
        args.model,
        args.input,
        args.manifest,
        save_json=args.save_json,
        save_txt=args.save_txt,
        save_img=args.save_img,
        resume=args.resume,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        agnostic=args.agnostic_nms,
        classes=classes,
        family=args.family,
        **({} if args.retina_masks is None else {"retina_masks": args.retina_masks}),
        backend=args.backend,
    )
    n = sum(len(r) for _, r in res)
    print(f"{len(res)} image(s), {n} result(s)" + (" (the rest done by the interrupted run)" if args.resume else ""),
          file=sys.stderr)
    for path in (args.save_json, args.save_txt, args.save_img):
        if path:
            print(f"saved {path}", file=sys.stderr)
    return 0
