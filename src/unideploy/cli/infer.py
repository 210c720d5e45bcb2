"""``unideploy infer MODEL --input DIR[,DIR2] --output DIR``: tensor files -> output files (stage 2 of 3)."""

from __future__ import annotations

import argparse
import sys

from unideploy.cli.common import check_outputs, examples, positive_int, threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="offline stage 2: tensor files -> output files (any backend)",
        description="Run a model on folders of .npy/.bin tensor files (one folder per model input, "
        "files matched by name) and write <stem>_<output index>.<fmt> files into a "
        "date-time subfolder of --output (ais_bench conventions).",
        epilog=examples("unideploy infer model.onnx --input tensors/ --output outputs/",
                        "unideploy infer model.xml --input tensors/ --output outputs/ --output-dirname run1 --outfmt bin"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="model file (.onnx, OpenVINO .xml or its folder, ...)")
    p.add_argument("--input", required=True, metavar="DIR[,DIR2…]", help="one folder per model input, in input order")
    p.add_argument("--output", required=True, metavar="DIR", help="parent folder of the output subfolder")
    p.add_argument("--outfmt", default="npy", choices=["npy", "bin", "txt"], help="output file format (default npy)")
    p.add_argument("--batchsize", type=positive_int, default=None, help="samples per run (default: the model's batch or 1)")
    p.add_argument("--output-dirname", default=None, metavar="NAME", help="subfolder name instead of the date-time")
    p.add_argument("--backend", default=None, help="runtime: onnxruntime, openvino, ... (default: by file type)")
    p.add_argument("--device", default=None, help="device, e.g. cpu, cuda:0, CPU, GPU")
    p.add_argument("--threads", type=threads, default=None, help="runtime threads (default: the runtime's choice)")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was interrupted (or hit a full disk) with the same flags: skip the samples "
                        "it finished; the outputs end up as an uninterrupted run's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unideploy.tools.offline import infer

    check_outputs(folders={"--output": args.output})
    opts = {"threads": args.threads} if args.threads else {}
    rep = infer(
        args.model,
        args.input,
        args.output,
        outfmt=args.outfmt,
        batchsize=args.batchsize,
        output_dirname=args.output_dirname,
        backend=args.backend,
        device=args.device,
        resume=args.resume,
        **opts,
    )
    resumed = f" (after {rep.resumed} done by the interrupted run)" if rep.resumed else ""
    print(
        f"{len(rep.stems)} sample(s){resumed} in {rep.batches} batch(es), {rep.mean_ms:.2f} ms per batch; outputs in "
        f"{rep.output_dir}",
        file=sys.stderr,
    )
    print(rep.output_dir)
    return 0
