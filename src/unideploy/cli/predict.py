"""``unideploy predict MODEL SOURCE``: detections for an image, folder, glob or video."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_model_flags, predictor_kwargs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a model on images, folders, globs or videos",
                       description="Run a model on an image, a folder, a glob or a video file and save the results.")
    add_model_flags(p)
    p.add_argument("source", help="image file, folder, glob pattern (quote it) or video file")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image (default 300)")
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
    from ..pipeline import load
    from ..sinks import JsonLinesSink, Sinks, VideoSink, draw_detections
    from ..sources import Source

    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    if args.ray is not None:  # scale-out: unideploy.distributed owns this path
        from ..distributed import predict_cli

        return predict_cli(args, classes)
    source = Source(args.source, args.vid_stride)
    with load(args.model, conf=args.conf, iou=args.iou, max_det=args.max_det, agnostic=args.agnostic_nms,
              classes=classes, **predictor_kwargs(args)) as predictor:
        video_path = args.save_video
        if source.is_video and args.save_img and not video_path:  # a video in, an annotated video out
            video_path = str(Path(args.save_img) / f"{Path(str(source.video)).stem or 'stream'}.mp4")
        sinks = Sinks(args.save_json, args.save_txt, None if source.is_video and video_path else args.save_img)
        video = VideoSink(video_path) if video_path else None
        jsonl = JsonLinesSink(args.save_jsonl) if args.save_jsonl else None
        failures: list[tuple[str, str]] = []
        n_ok = n_det = 0
        bar = None
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=len(source), unit="img", desc="predict", file=sys.stderr, dynamic_ncols=True)
        try:
            for out in predictor.stream(source, keep_images=sinks.wants_image or video is not None):
                if out.ok:
                    n_ok += 1
                    n_det += len(out.result)
                    sinks.add(out.item.name, out.item.index, out.result, out.image)
                    if video is not None:
                        if video.frames == 0 and source.stats is not None:
                            video.fps = source.stats.fps / source.vid_stride
                        video.write(draw_detections(out.image, out.result))
                else:
                    failures.append((out.item.name, str(out.error)))
                if jsonl is not None:
                    jsonl.add(out.item.name, out.item.index, out.result, frame=out.item.frame,
                              error=None if out.ok else str(out.error))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            sinks.close()
            if video is not None:
                video.close()
            if jsonl is not None:
                jsonl.close()
    if not args.quiet:
        t = predictor.times.summary()
        what = "classified" if predictor.task == "classify" else f"{n_det} detection(s)"
        print(f"{n_ok} image(s), {what}; per image: decode {t['decode']*1e3:.1f} ms, "
              f"preprocess {t['preprocess']*1e3:.1f} ms, inference {t['inference']*1e3:.1f} ms, "
              f"postprocess {t['postprocess']*1e3:.1f} ms", file=sys.stderr)
        for path in (args.save_json, args.save_txt, args.save_img, video_path, args.save_jsonl):
            if path:
                print(f"saved {path}", file=sys.stderr)
    if source.stats is not None and (not args.quiet or source.stats.skipped or source.stats.ended_early):
        print(f"video: {source.stats.describe()}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} file(s) skipped:", file=sys.stderr)
        for name, why in failures:
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    return 0
