"""``unideploy pipeline run|check|eval PIPELINE.yaml``: multi-model graphs (:mod:`unideploy.apps.graphs`) in YAML."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import check_outputs, examples, positive_int, report_failures


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="multi-model pipelines (detect -> crop -> classify ...) from YAML",
        description="Run, check or evaluate a pipeline of models and built-in ops described in YAML "
        "(see docs/offline_pipelines.md).",
        epilog=examples("unideploy pipeline check plates.yaml",
                        "unideploy pipeline run plates.yaml images/ --save-jsonl stages.jsonl",
                        "unideploy pipeline eval plates.yaml --data val/data.yaml --json report.json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    act = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = act.add_parser("run", help="run a pipeline on images, folders, globs or videos")
    r.add_argument("pipeline", help="pipeline YAML file")
    r.add_argument("source", help="image file, folder, glob pattern (quote it) or video file")
    r.add_argument("--vid-stride", type=positive_int, default=1, help="use every N-th video frame")
    r.add_argument("--parallel", action="store_true", help="run independent stages in threads")
    r.add_argument("--save-json", metavar="FILE", default=None, help="COCO results JSON of the output stage")
    r.add_argument("--save-txt", metavar="DIR", default=None, help="YOLO txt labels of the output stage")
    r.add_argument("--save-img", metavar="DIR", default=None, help="images annotated with the output stage")
    r.add_argument("--save-jsonl", metavar="FILE", default=None, help="one JSON line per image with every stage")
    r.add_argument("--quiet", action="store_true", help="no summary")
    r.set_defaults(func=run)
    c = act.add_parser("check", help="build the pipeline, check stage types, print the graph")
    c.add_argument("pipeline", help="pipeline YAML file")
    c.set_defaults(func=check)
    e = act.add_parser("eval", help="accuracy of every stage on a labelled data set")
    e.add_argument("pipeline", help="pipeline YAML file")
    e.add_argument("--data", required=True, help="COCO instances JSON or Ultralytics data.yaml (val split)")
    e.add_argument("--images", default=None, help="image folder for a COCO JSON (default: found beside it)")
    e.add_argument("--json", metavar="FILE", default=None, help="write the report as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=evaluate)


def check(args: argparse.Namespace) -> int:
    from unideploy.apps.graphs import load_graph

    with load_graph(args.pipeline) as graph:
        print(graph.describe())
    return 0


def run(args: argparse.Namespace) -> int:
    from unideploy.apps.graphs import load_graph
    from unideploy.core.errors import InputError
    from unideploy.core.results import Detections
    from unideploy.core.sinks import JsonLinesSink, Sinks
    from unideploy.core.sources import Outcome, Source

    check_outputs(files={"--save-json": args.save_json, "--save-jsonl": args.save_jsonl},
                  folders={"--save-txt": args.save_txt, "--save-img": args.save_img})
    source = Source(args.source, args.vid_stride)
    n_ok = 0
    failures: list[tuple[str, str]] = []
    with load_graph(args.pipeline, parallel=args.parallel or None) as graph:
        if graph.types[graph.output] != "detections" and (args.save_json or args.save_txt or args.save_img):
            raise InputError(
                f"--save-json/--save-txt/--save-img need an output stage of type detections; "
                f"'{graph.output}' gives {graph.types[graph.output]} (use --save-jsonl)"
            )
        sinks = Sinks.from_paths(args.save_json, args.save_txt, args.save_img)
        jsonl = JsonLinesSink(args.save_jsonl) if args.save_jsonl else None  # every stage's value, not an outcome
        try:
            for item, res, err, img in graph.stream(source, keep_images=sinks.wants_image):
                if err is not None:
                    failures.append((item.name, str(err)))
                    continue
                n_ok += 1
                if isinstance(res.output, Detections):
                    sinks.add(Outcome(item, res.output, image=img))
                if jsonl is not None:
                    jsonl.write({"index": item.index, "frame": item.frame, **res.to_dict()})
        finally:
            sinks.close()
            if jsonl is not None:
                jsonl.close()
        if not args.quiet:
            t = graph.timings()
            print(
                f"{n_ok} image(s); per image: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()),
                file=sys.stderr,
            )
    return report_failures(failures)


def evaluate(args: argparse.Namespace) -> int:
    from unideploy.apps.graphs import load_graph
    from unideploy.apps.graphs.evaluate import evaluate_graph, format_report
    from unideploy.core.sinks import atomic_write_json

    check_outputs(files={"--json": args.json})
    with load_graph(args.pipeline) as graph:
        report = evaluate_graph(graph, args.data, images=args.images, progress=not args.quiet)
    print(format_report(report))
    for w in report["warnings"][:20]:
        print(f"warning: {w}", file=sys.stderr)
    for s in report["skipped"]:
        print(f"skipped: {s}", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, report)
    return 1 if report["skipped"] else 0
