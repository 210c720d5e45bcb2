"""A stand-in for CANN's ``atc`` command: checks the command line against ATC's documented options and
writes a fake OM (see ``fake_om.py``) instead of compiling.

Checked as ATC documents them: every option is ``--name=value`` with a known name; ``--model``,
``--framework``, ``--output`` and ``--soc_version`` are present; ``--framework=5`` for ONNX; the
``--input_shape`` is ``name:d0,d1,...``; ``--dynamic_batch_size`` needs -1 as the first dim and 2-100
gears in [1, 2048]; ``--dynamic_image_size`` needs -1,-1 as H,W and "h,w;h,w" gears; the two never together;
``--precision_mode``, ``--output_type`` and ``--log`` take their documented values; an ``--insert_op_conf`` AIPP
file is parsed and checked against ATC's documented AIPP fields (``fake_aipp.py``) and recorded in the fake OM,
which then takes uint8 NHWC input and applies it. Exit status 1 with an ``E10001``-style message on the first
violation, like ATC.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_aipp import AippError, load_aipp  # noqa: E402
from fake_om import write_fake_om  # noqa: E402

KNOWN = {"model", "framework", "output", "soc_version", "input_format", "input_shape", "dynamic_batch_size",
         "dynamic_image_size", "dynamic_dims", "precision_mode", "precision_mode_v2", "output_type", "log",
         "insert_op_conf", "op_select_implmode", "keep_dtype", "out_nodes", "input_fp16_nodes", "mode", "weight"}
PRECISION = {"force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision",
             "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16", "force_fp32",
             "cube_fp16in_fp32out"}
SOCS = re.compile(r"^Ascend(310|310P[1-7]|310B[1-4]|910|910[A-B][1-4]?|910_93\d\d|910PremiumA)$")


def fail(msg: str) -> None:
    print(f"ATC run failed, Please check the detail log, Try 'atc --help' for more information\nE10001: {msg}", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str]) -> None:
    opts: dict[str, str] = {}
    for arg in argv:
        m = re.fullmatch(r"--([a-z_]+)=(.*)", arg)
        if not m:
            fail(f"argument {arg!r} is not of the form --name=value")
        name, value = m.group(1), m.group(2)
        if name not in KNOWN:
            fail(f"unknown option --{name}")
        if name in opts:
            fail(f"option --{name} given twice")
        if value == "" or value != value.strip():
            fail(f"option --{name} has an empty value or a value with spaces around it")
        opts[name] = value
    for req in ("model", "framework", "output", "soc_version"):
        if req not in opts:
            fail(f"required option --{req} is missing")
    if opts["framework"] != "5":
        fail(f"--framework={opts['framework']}: an ONNX model needs --framework=5")
    if not Path(opts["model"]).is_file():
        fail(f"--model={opts['model']} does not exist")
    if not SOCS.match(opts["soc_version"]):
        fail(f"--soc_version={opts['soc_version']} is not a supported SoC")
    if opts.get("input_format", "NCHW") not in ("NCHW", "NHWC", "ND"):
        fail(f"--input_format={opts['input_format']} is invalid")
    m = re.fullmatch(r"([^:;]+):(-?\d+(?:,-?\d+)*)", opts.get("input_shape", ""))
    if not m:
        fail("--input_shape must be name:d0,d1,... for the single input")
    name, dims = m.group(1), [int(v) for v in m.group(2).split(",")]
    batch = hw = None
    if "dynamic_batch_size" in opts and "dynamic_image_size" in opts:
        fail("--dynamic_batch_size and --dynamic_image_size cannot be used together")
    if "dynamic_batch_size" in opts:
        if not re.fullmatch(r"\d+(,\d+)*", opts["dynamic_batch_size"]):
            fail("--dynamic_batch_size must be comma-separated gears")
        batch = [int(v) for v in opts["dynamic_batch_size"].split(",")]
        if dims[0] != -1 or -1 in dims[1:]:
            fail("--dynamic_batch_size needs -1 as the first --input_shape dim only")
        if not 2 <= len(batch) <= 100 or not all(1 <= b <= 2048 for b in batch):
            fail("--dynamic_batch_size needs 2 to 100 gears in [1, 2048]")
    if "dynamic_image_size" in opts:
        if not re.fullmatch(r"\d+,\d+(;\d+,\d+)*", opts["dynamic_image_size"]):
            fail("--dynamic_image_size must be h,w;h,w gears")
        hw = [[int(v) for v in g.split(",")] for g in opts["dynamic_image_size"].split(";")]
        if len(dims) != 4 or dims[2:] != [-1, -1] or -1 in dims[:2]:
            fail("--dynamic_image_size needs -1,-1 as the H,W dims of --input_shape")
        if not 2 <= len(hw) <= 100:
            fail("--dynamic_image_size needs 2 to 100 gears")
    if batch is None and hw is None and -1 in dims:
        fail("--input_shape has -1 dims but no dynamic gears were given")
    if "precision_mode" in opts and opts["precision_mode"] not in PRECISION:
        fail(f"--precision_mode={opts['precision_mode']} is invalid")
    if opts.get("output_type", "FP32") not in ("FP32", "FP16", "UINT8", "INT8"):
        fail(f"--output_type={opts['output_type']} is invalid")
    if opts.get("log", "error") not in ("debug", "info", "warning", "error", "null"):
        fail(f"--log={opts['log']} is invalid")
    aipp = None
    if "insert_op_conf" in opts:
        if not Path(opts["insert_op_conf"]).is_file():
            fail(f"--insert_op_conf={opts['insert_op_conf']} does not exist")
        if len(dims) != 4 or dims[1] != 3 or hw is not None:
            fail("AIPP needs a static-size 4-D image input with 3 channels")
        try:
            aipp = load_aipp(opts["insert_op_conf"], dims)
        except AippError as e:
            fail(f"--insert_op_conf: {e}")
    out = Path(opts["output"])
    if out.suffix == ".om":
        fail("--output must not end in .om (ATC appends it)")
    import base64

    write_fake_om(out.with_name(out.name + ".om"), onnx_b64=base64.b64encode(Path(opts["model"]).read_bytes()).decode(),
                  input_name=name,
                  input_shape=dims, dynamic_batch=batch, dynamic_hw=hw, soc=opts["soc_version"],
                  output_type=opts.get("output_type", "FP32"), precision_mode=opts.get("precision_mode", "force_fp16"),
                  argv=argv, aipp=aipp)
    print("ATC run success, welcome to the next use.")


if __name__ == "__main__":
    main(sys.argv[1:])
