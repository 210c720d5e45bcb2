"""``unideploy quantize MODEL --calib DIR``: INT8 post-training quantization with a before/after report."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import check_outputs, examples, fraction, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="INT8 post-training quantization (NNCF / ONNX Runtime) with an accuracy gate",
                       description="Quantize a float ONNX or OpenVINO model to INT8 with calibration images preprocessed "
                                   "exactly as predict does. Prints and writes a before/after report: size, mAP50-95 / "
                                   "mAP50 (with --data), ms/image and images/s on this machine (OpenVINO: the float model at the "
                                   "runtime's default precision, bf16 on CPUs with native bf16, and at true FP32) and "
                                   "which artefact is faster.",
                       epilog=examples("unideploy quantize model.onnx --calib images/",
                                       "unideploy quantize model.onnx --calib images/ --data val/data.yaml "
                                       "--max-drop 0.01",
                                       "unideploy quantize model.onnx --calib 'images/*.jpg' --backend onnxruntime "
                                       "--out model_int8.onnx"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="float model: .onnx, OpenVINO .xml or its folder")
    p.add_argument("--calib", required=True, help="calibration images: folder or glob (undecodable files are skipped)")
    p.add_argument("--backend", default="openvino", help="runtime of the INT8 model: openvino (IR) or onnxruntime (ONNX)")
    p.add_argument("--method", default=None, help="nncf or ort (default: nncf for openvino, ort for onnxruntime)")
    p.add_argument("--samples", type=positive_int, default=300, help="calibration images to use at most (default 300)")
    p.add_argument("--preset", default="mixed", help="mixed (default) or performance")
    p.add_argument("--max-drop", type=fraction, default=None,
                   help="largest acceptable mAP50-95 drop, absolute 0..1 (0.01 = one point); needs --data")
    p.add_argument("--data", default=None, help="labelled data (COCO JSON or data.yaml) for accuracy figures and the gate")
    p.add_argument("--images", default=None, help="image folder for a COCO JSON --data (default: found beside it)")
    p.add_argument("--out", default=None, help="output model (.xml/.onnx) or folder (default: <model>_int8... beside it)")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                   help="keep nodes whose names match in float (repeatable)")
    p.add_argument("--quantize-head", dest="keep_head_float", action="store_false",
                   help="also quantize a YOLO head's box decoding (kept in float by default)")
    p.add_argument("--recipe", default="auto",
                   help="auto (default: rtdetr for RT-DETR models, else default), default, seed, transformer, rtdetr or "
                        "rtdetr-decoder: NNCF model type and layers kept in float")
    p.add_argument("--device", default=None, help="device for evaluation and timing (default CPU)")
    p.add_argument("--no-speed", dest="speed", action="store_false", help="skip the ms/image and images/s measurement")
    p.add_argument("--speed-runs", type=positive_int, default=50, help="timed runs per model (default 50)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the report here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unideploy.core.progress import on_terminal
    from unideploy.core.sinks import atomic_write_json
    from unideploy.tools.quantize import quantize
    from unideploy.tools.quantize.methods import quiet_third_party

    check_outputs(files={"--json": args.json})
    gate = f", accuracy control to --max-drop {args.max_drop} on {args.data}" if args.max_drop is not None else ""
    if on_terminal() and not args.quiet:  # a progress note for people; logs and pipes get only the result
        print(f"quantizing {args.model} for {args.backend} (up to {args.samples} calibration images{gate}); "
              f"this takes a while on a CPU ...", file=sys.stderr, flush=True)
    # NNCF logs progress bars and INFO lines on stdout; keep them for --debug / --verbose only
    with quiet_third_party(not args.verbose):
        result = quantize(args.model, args.calib, backend=args.backend, method=args.method, samples=args.samples,
                          preset=args.preset, max_drop=args.max_drop, data=args.data, images=args.images,
                          out=args.out, ignore=args.ignore, keep_head_float=args.keep_head_float, recipe=args.recipe, device=args.device,
                          speed=args.speed, speed_runs=args.speed_runs)
    r = result.report
    print(r["summary"])
    print(f"saved {result.path}" + (f" (report {result.report_path})" if result.report_path else ""))
    for s in r["calibration"]["skipped"]:
        print(f"skipped calibration image {s}", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, r)
    return 0
