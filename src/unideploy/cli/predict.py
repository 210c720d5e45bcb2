"""``unideploy predict MODEL SOURCE``: detections for an image, folder, glob or video."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import add_model_flags, model_args, report_failures


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a model on images, folders, globs or videos",
                       description="Run a model on an image, a folder, a glob or a video file and save the results.")
    add_model_flags(p)
    p.add_argument("source", help="image file, folder, glob pattern (quote it) or video file")
    p.add_argument("--conf", type=float, default=None,
                   help="confidence threshold (default: the model family's; 0.25 for Ultralytics models)")
    p.add_argument("--iou", type=float, default=None,
                   help="NMS IoU threshold (default: the model family's; 0.7 Ultralytics, 0.45 YOLOv5/YOLOX)")
    p.add_argument("--max-det", type=int, default=None,
                   help="maximum detections per image (default: the model family's; 300 for most)")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--classes", default=None, help="keep only these class indices, e.g. 0,2")
    p.add_argument("--vid-stride", type=int, default=1, help="use every N-th video frame")
    p.add_argument("--save-json", metavar="FILE", default=None, help="write COCO results JSON")
    p.add_argument("--save-txt", metavar="DIR", default=None, help="write YOLO txt labels (with confidence)")
    p.add_argument("--save-img", metavar="DIR", default=None,
                   help="write annotated images (for a video source: one annotated video DIR/<name>.mp4)")
    p.add_argument("--save-video", metavar="FILE", default=None, help="write the annotated frames as a video (.mp4/.avi)")
    p.add_argument("--save-jsonl", metavar="FILE", default=None, help="write one JSON line per image or frame")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray Data (a local instance, or the cluster at ADDRESS); needs the ray extra")
    p.add_argument("--ray-actors", type=int, default=2, help="with --ray: predictor actors (default 2)")
    p.add_argument("--save-parquet", metavar="DIR", default=None, help="with --ray: write the rows as Parquet")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unideploy.tools.predict import predict

    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    post = {"conf": args.conf, "iou": args.iou, "max_det": args.max_det, "agnostic": args.agnostic_nms,
            "classes": classes}
    if args.ray is not None:  # scale-out on Ray Data: the same arguments, another library call
        return run_ray(args, post)
    s = predict(args.model, args.source, **model_args(args), **post, vid_stride=args.vid_stride,
                save_json=args.save_json, save_txt=args.save_txt, save_img=args.save_img, save_video=args.save_video,
                save_jsonl=args.save_jsonl, progress=not args.quiet)
    if not args.quiet:
        t = s.times
        what = "classified" if s.task == "classify" else f"{s.detections} detection(s)"
        print(f"{s.images} image(s), {what}; per image: decode {t['decode']*1e3:.1f} ms, "
              f"preprocess {t['preprocess']*1e3:.1f} ms, inference {t['inference']*1e3:.1f} ms, "
              f"postprocess {t['postprocess']*1e3:.1f} ms", file=sys.stderr)
        for path in s.saved:
            print(f"saved {path}", file=sys.stderr)
    if s.video is not None and (not args.quiet or s.video.skipped or s.video.ended_early):
        print(f"video: {s.video.describe()}", file=sys.stderr)
    return report_failures(s.failures)


def run_ray(args: argparse.Namespace, post: dict) -> int:
    """``predict ... --ray [ADDRESS]``: the flags mapped onto :func:`unideploy.ray.predict`."""
    from unideploy.apps.distributed import predict as ray_predict
    from unideploy.core.errors import InputError

    for flag in ("save_txt", "save_img", "save_video", "save_jsonl"):
        if getattr(args, flag, None):
            raise InputError(f"--{flag.replace('_', '-')} is not available with --ray; use --save-json or --save-parquet")
    if args.ray_actors < 1:
        raise InputError(f"--ray-actors must be a positive integer, got {args.ray_actors}")
    results = ray_predict(args.model, args.source, address=None if args.ray == "local" else args.ray,
                          concurrency=args.ray_actors, save_json=args.save_json, save_parquet=args.save_parquet,
                          **model_args(args), **post)
    failures = [(n, d) for n, d in results if isinstance(d, str)]
    if not args.quiet:
        n_det = sum(len(d) for _, d in results if not isinstance(d, str))
        print(f"{len(results) - len(failures)} image(s), {n_det} detection(s) on Ray with {args.ray_actors} actor(s)",
              file=sys.stderr)
        for path in (args.save_json, args.save_parquet):
            if path:
                print(f"saved {path}", file=sys.stderr)
    return report_failures(failures)
