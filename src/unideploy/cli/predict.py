"""``unideploy predict MODEL SOURCE``: detections for an image, folder, glob or video."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

from unideploy.cli.common import (
    add_model_flags, check_outputs, class_list, examples, fraction, model_args, positive_int, report_failures,
)

#: sources with at most this many items get one line per image (always with --verbose, never with --quiet)
PER_IMAGE_LINES = 50

EPILOG = examples(
    "unideploy predict model.onnx images/ --save-json preds.json --save-img annotated/",
    "unideploy predict model_openvino_model/ 'photos/*.jpg' --conf 0.4 --classes 0,2 --save-txt labels/",
    "unideploy predict model.onnx clip.mp4 --vid-stride 2 --save-video annotated.mp4",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a model on images, folders, globs or videos",
                       description="Run a model on an image, a folder, a glob or a video file and save the results.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("source", help="image file, folder, glob pattern (quote it) or video file")
    p.add_argument("--conf", type=fraction, default=None,
                   help="confidence threshold, 0..1 (default: the model family's; 0.25 for Ultralytics models)")
    p.add_argument("--iou", type=fraction, default=None,
                   help="NMS IoU threshold, 0..1 (default: the model family's; 0.7 Ultralytics, 0.45 YOLOv5/YOLOX)")
    p.add_argument("--max-det", type=positive_int, default=None,
                   help="maximum detections per image (default: the model family's; 300 for most)")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--multi-label", action="store_true",
                   help="NMS keeps a box once per class scoring over --conf (as Ultralytics val), not only its best")
    p.add_argument("--classes", type=class_list, default=None, help="keep only these class indices, e.g. 0,2")
    p.add_argument("--retina-masks", action=argparse.BooleanOptionalAction, default=None,
                   help="segmentation: masks assembled at the image size (default) or, with --no-retina-masks, "
                        "Ultralytics' default path (at the model input size, then mapped onto the image)")
    p.add_argument("--vid-stride", type=positive_int, default=1, help="use every N-th video frame")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode large JPEGs at 1/2, 1/4 or 1/8 scale, the smallest still >= the model input (changes pixels)")
    p.add_argument("--save-json", metavar="FILE", default=None, help="write COCO results JSON")
    p.add_argument("--save-txt", metavar="DIR", default=None, help="write YOLO txt labels (with confidence)")
    p.add_argument("--save-img", metavar="DIR", default=None,
                   help="write annotated images (for a video source: one annotated video DIR/<name>.mp4)")
    p.add_argument("--save-video", metavar="FILE", default=None, help="write the annotated frames as a video (.mp4/.avi)")
    p.add_argument("--save-jsonl", metavar="FILE", default=None, help="write one JSON line per image or frame")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was interrupted (or hit a full disk) with the same flags: skip the "
                        "images it finished; the outputs end up as an uninterrupted run's")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, per-image lines or summary")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray Data (a local instance, or the cluster at ADDRESS); needs the ray extra")
    p.add_argument("--ray-actors", type=positive_int, default=2, help="with --ray: predictor actors (default 2)")
    p.add_argument("--save-parquet", metavar="DIR", default=None, help="with --ray: write the rows as Parquet")
    p.set_defaults(func=run)


class LineSink:
    """Prints one line per item on stderr, Ultralytics' habit:
    ``image 3/150 val_00003.jpg 320x320: 2 circle, 1 star, 7.1 ms`` (the image's width x height; the time is the
    wall time since the previous item, which in the streaming engine is what each item costs; the first item has
    none, as its time would include loading the model)."""

    wants_image = False

    def __init__(self, total: int, kind: str = "image") -> None:
        self.total, self.kind, self.seen = total, kind, 0
        self._t: float | None = None  # the first item's time would include loading the model: not shown

    def add(self, outcome: Any) -> None:
        """Print the line of one outcome (its reason when it was skipped)."""
        now = time.perf_counter()
        ms, self._t = (None if self._t is None else (now - self._t) * 1e3), now
        self.seen = int(outcome.item.index) + 1  # the position in the source (a resumed run starts past 1)
        head = f"{self.kind} {self.seen}/{self.total or '?'} {outcome.item.name}"
        if outcome.error is not None:
            print(f"{head}: skipped", file=sys.stderr)
            return
        res = outcome.result
        shape = getattr(res, "image_shape", None)
        size = f" {shape[1]}x{shape[0]}" if shape else ""
        names = list(getattr(res, "class_names", []))
        if hasattr(res, "xyxy"):
            what = ", ".join(f"{n} {name}" for name, n in Counter(names).items()) or "no detections"
        else:
            what = ", ".join(f"{name} {p:.2f}" for name, p in zip(names[:3], res.confidence[:3]))
        print(f"{head}{size}: {what}" + ("" if ms is None else f", {ms:.1f} ms"), file=sys.stderr)

    def close(self) -> None:
        """Nothing to finish."""


def run(args: argparse.Namespace) -> int:
    from unideploy.core.sources import Source
    from unideploy.tools.predict import predict

    post = {"conf": args.conf, "iou": args.iou, "max_det": args.max_det, "agnostic": args.agnostic_nms,
            "classes": args.classes, "retina_masks": args.retina_masks, "multi_label": args.multi_label or None}
    check_outputs(files={"--save-json": args.save_json, "--save-video": args.save_video,
                         "--save-jsonl": args.save_jsonl},
                  folders={"--save-txt": args.save_txt, "--save-img": args.save_img,
                           "--save-parquet": args.save_parquet})
    if args.ray is not None and args.fast_decode:
        from unideploy.core.errors import InputError

        raise InputError("--fast-decode is not available with --ray (the Ray workers decode at full size); drop one")
    if args.ray is not None:  # scale-out on Ray Data: the same arguments, another library call
        return run_ray(args, post)
    source = Source(args.source, args.vid_stride)
    total = len(source)
    lines = not args.quiet and (args.verbose or (not source.is_video and 0 < total <= PER_IMAGE_LINES))
    sinks = [LineSink(total, "frame" if source.is_video else "image")] if lines else []
    s = predict(args.model, source, **model_args(args), **post, fast_decode=args.fast_decode,
                save_json=args.save_json, save_txt=args.save_txt, save_img=args.save_img, save_video=args.save_video,
                save_jsonl=args.save_jsonl, sinks=sinks, progress=not args.quiet and not lines, resume=args.resume)
    if not args.quiet:
        unit = "frame" if s.video is not None else "image"
        if s.resumed:
            print(f"resumed: {s.resumed} {unit}(s) done by the interrupted run", file=sys.stderr)
        elif args.resume:
            print(f"resume: no checkpoint beside the outputs, so every {unit} was processed", file=sys.stderr)
        print(summary_line(s), file=sys.stderr)
        saved = [p for p in s.saved if not (s.video is not None and p == args.save_img)]  # the video, not its folder
        for path in saved:
            print(f"saved {path}", file=sys.stderr)
        if not saved:
            print("nothing saved: add --save-json FILE, --save-txt DIR, --save-img DIR, --save-video FILE or "
                  "--save-jsonl FILE to keep the results", file=sys.stderr)
    if s.video is not None and (not args.quiet or s.video.skipped or s.video.ended_early):
        print(f"video: {s.video.describe()}", file=sys.stderr)
    return report_failures(s.failures)


def summary_line(s: Any) -> str:
    """``150 image(s), 212 detection(s); per image: decode 1.2 ms, ...`` (frames for a video; stages not timed
    left out)."""
    t = s.times
    unit = "frame" if s.video is not None else "image"
    what = "classified" if s.task == "classify" else f"{s.detections} detection(s)"
    stages = ", ".join(f"{k} {t[k] * 1e3:.1f} ms" for k in ("decode", "preprocess", "inference", "postprocess")
                       if t.get(k))
    return f"{s.images} {unit}(s), {what}; per {unit}: {stages or 'not timed'}"


def run_ray(args: argparse.Namespace, post: dict) -> int:
    """``predict ... --ray [ADDRESS]``: the flags mapped onto :func:`unideploy.ray.predict`."""
    from unideploy.apps.distributed import predict as ray_predict
    from unideploy.core.errors import InputError

    for flag in ("save_txt", "save_img", "save_video", "save_jsonl", "resume"):
        if getattr(args, flag, None):
            raise InputError(f"--{flag.replace('_', '-')} is not available with --ray; use --save-json or --save-parquet")
    results = ray_predict(args.model, args.source, address=None if args.ray == "local" else args.ray,
                          concurrency=args.ray_actors, save_json=args.save_json, save_parquet=args.save_parquet,
                          **model_args(args), **post)
    failures = [(n, d) for n, d in results if isinstance(d, str)]
    if not args.quiet:
        n_det = sum(len(d) for _, d in results if not isinstance(d, str))
        from unideploy.apps.distributed import last_run

        lost = (f"; {last_run['restarts']} actor(s) lost and restarted, {last_run['retries']} batch(es) run again"
                if last_run.get("restarts") or last_run.get("retries") else "")
        print(f"{len(results) - len(failures)} image(s), {n_det} detection(s) on Ray with {args.ray_actors} actor(s)"
              + lost, file=sys.stderr)
        for path in (args.save_json, args.save_parquet):
            if path:
                print(f"saved {path}", file=sys.stderr)
    return report_failures(failures)
