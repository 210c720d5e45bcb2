"""``unideploy track MODEL SOURCE``: multi-object tracking (ByteTrack / BoT-SORT) on a video, stream or frames."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unideploy.cli.common import (
    add_model_flags, check_outputs, class_list, examples, fraction, model_args, non_negative_int, positive_int,
    report_failures,
)

EPILOG = examples(
    "unideploy track model.onnx clip.mp4 --save-mot tracks.txt --save-video tracked.mp4",
    "unideploy track model.onnx clip.mp4 --tracker botsort --tracker-config my_botsort.yaml --save-jsonl t.jsonl",
    "unideploy track model.onnx rtsp://camera/stream --drop-policy latest --reconnect 10 --save-mot live.txt",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="track objects through a video, stream or frame sequence",
                       description="Detect objects in every frame and keep their identities across frames "
                                   "(ByteTrack or BoT-SORT, configured with Ultralytics' tracker YAML keys).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("source", help="video file, stream URL (rtsp://, http://, ...), or a folder of frames")
    p.add_argument("--tracker", default="bytetrack",
                   help="bytetrack, botsort, or a tracker YAML in Ultralytics' keys (default bytetrack)")
    p.add_argument("--tracker-config", metavar="FILE", default=None,
                   help="tracker YAML whose keys override the tracker's defaults (track_high_thresh, track_buffer, ...)")
    p.add_argument("--conf", type=fraction, default=None,
                   help="detection confidence threshold, 0..1 (default 0.1, as Ultralytics track)")
    p.add_argument("--iou", type=fraction, default=None, help="NMS IoU threshold, 0..1 (default: the model family's)")
    p.add_argument("--max-det", type=positive_int, default=None, help="maximum detections per frame")
    p.add_argument("--classes", type=class_list, default=None, help="keep only these class indices, e.g. 0,2")
    p.add_argument("--vid-stride", type=positive_int, default=1, help="use every N-th frame")
    p.add_argument("--drop-policy", choices=("latest", "every"), default="latest",
                   help="for a stream URL: keep only the newest frame when inference falls behind (latest, default) "
                        "or queue every frame (every)")
    p.add_argument("--reconnect", type=non_negative_int, default=5, help="for a stream URL: reopen attempts after it drops (default 5)")
    p.add_argument("--save-mot", metavar="FILE", default=None,
                   help="write MOTChallenge text: frame,id,x,y,w,h,score,class+1,-1 (frame 1-based)")
    p.add_argument("--save-jsonl", metavar="FILE", default=None, help="write one JSON line per frame, with track ids")
    p.add_argument("--save-video", metavar="FILE", default=None, help="write the frames with ids and trails (.mp4/.avi)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unideploy.tools.track import track

    check_outputs(files={"--save-mot": args.save_mot, "--save-jsonl": args.save_jsonl, "--save-video": args.save_video,
                         "--tracker-config": None})
    if args.tracker_config is not None and not Path(args.tracker_config).is_file():
        from unideploy.core.errors import InputError

        raise InputError(f"--tracker-config expects an existing YAML file, got {args.tracker_config!r}")
    classes = args.classes
    s = track(args.model, args.source, tracker=args.tracker, tracker_config=args.tracker_config, **model_args(args),
              conf=args.conf, iou=args.iou, max_det=args.max_det, classes=classes, vid_stride=args.vid_stride,
              stream_policy=args.drop_policy, reconnect=args.reconnect, save_mot=args.save_mot,
              save_jsonl=args.save_jsonl, save_video=args.save_video)
    if not args.quiet:
        print(f"{s.frames} frame(s), {s.tracks} track(s), {s.detections} tracked box(es) with "
              f"{s.tracker['tracker_type']} in {s.seconds:.2f} s ({s.fps:.1f} frames/s)", file=sys.stderr)
        for path in s.saved:
            print(f"saved {path}", file=sys.stderr)
    if s.video is not None and (not args.quiet or s.video.ended_early):
        print(f"video: {s.video.describe()}", file=sys.stderr)
    return report_failures(s.failures)
