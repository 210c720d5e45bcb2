"""``unideploy export MODEL --to TARGET``: Ultralytics .pt/.yaml or ONNX -> ONNX / OpenVINO IR / ... with the spec embedded."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import examples, positive_int


def _parse_options(items: list[str] | None) -> dict[str, object]:
    from unideploy.core.errors import InputError

    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option expects KEY=VALUE, got {item!r}")
        v: object = value
        if value.lower() in ("true", "false"):
            v = value.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    v = cast(value)
                    break
                except ValueError:
                    continue
        out[key.strip()] = v
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    from unideploy.tools.convert import EXPORTERS  # a registry of lazy "module:function" entries: cheap

    targets = ", ".join(EXPORTERS.names())
    p = sub.add_parser("export", help="export/convert a model (Ultralytics .pt/.yaml, ONNX) to ONNX, OpenVINO IR, ...",
                       description="Export an Ultralytics .pt (or a .yaml config: random weights) or convert an ONNX "
                                   "model. The artefact carries its model spec (names, input size, task, family, "
                                   f"normalisation), so predict needs no extra flags. Targets: {targets}.",
                       epilog=examples("unideploy export yolov8n.pt", "unideploy export yolov8n.onnx --to openvino",
                                       "unideploy export yolov8n.pt --imgsz 320 --dynamic --out yolov8n_dyn.onnx"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="Ultralytics .pt checkpoint or .yaml config, or an .onnx file")
    p.add_argument("--to", default="onnx", metavar="TARGET", help=f"target format: {targets} (default onnx)")
    p.add_argument("--out", default=None, help="output file or folder (default: beside the model, named after it)")
    p.add_argument("--imgsz", default=None, help="static input size: 640 or 480,640 (default: the model's)")
    p.add_argument("--batch", type=positive_int, default=None, help="static batch size (default 1)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    p.add_argument("--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--half", action="store_true", help="FP16 weights")
    p.add_argument("--no-simplify", dest="simplify", action="store_false", help="keep the ONNX graph unsimplified")
    p.add_argument("--passes", default=None, help="graph passes, comma-separated: silu, static_grid")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="target-specific option (repeatable)")
    p.add_argument("--quiet", action="store_true", help="print only the output path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import io
    import time

    from unideploy.tools.convert import export
    from unideploy.runtime.open import read_spec

    t0 = time.perf_counter()
    log = io.StringIO()
    # Ultralytics' exporter prints a page of banners; keep it for --debug, show only the result otherwise
    with contextlib.redirect_stdout(log) if not args.debug else contextlib.nullcontext():
        path = export(args.model, to=args.to, out=args.out, imgsz=args.imgsz, batch=args.batch, dynamic=args.dynamic,
                      opset=args.opset, half=args.half, simplify=args.simplify, passes=args.passes,
                      **_parse_options(args.option))
    if args.quiet:
        print(path)
        return 0
    spec = read_spec(path) if path.suffix.lower() in (".onnx", ".xml") else None
    print(f"exported {args.model} -> {path} ({time.perf_counter() - t0:.1f} s)")
    if spec is not None:
        size = "dynamic" if spec.batch is None else f"{spec.batch}x3x{spec.imgsz[0]}x{spec.imgsz[1]}" if spec.imgsz else "?"
        print(f"  spec: task={spec.task} family={spec.family} input={size} classes={len(spec.names)} "
              f"precision={spec.extra.get('precision', 'fp32')} passes={','.join(spec.extra.get('passes', [])) or '-'}",
              file=sys.stdout)
    return 0
