"""The ``om`` target: ONNX -> Huawei Ascend offline model (``.om``) with ATC, the spec in a sidecar JSON.

The command line is built flag by flag from ATC's documented options (``atc --help`` / CANN "ATC
instructions")::

    atc --model=<onnx> --framework=5 --output=<out without .om> --soc_version=<SoC>
        --input_format=NCHW --input_shape=<name>:<n>,3,<h>,<w> [--dynamic_batch_size="1,2,4,8" with n = -1
        | --dynamic_image_size="h,w;h,w" with h,w = -1,-1] [--precision_mode=<mode>] [--insert_op_conf=<aipp.cfg>]
        --output_type=FP32 --log=error

The SoC comes from ``--option soc=Ascend310P3`` or, on an Ascend host, from ``npu-smi info``. When ``atc``
is on PATH it runs; otherwise :class:`BackendUnavailableError` prints the exact command to run on the
Ascend host (the ONNX it needs is kept beside the output as ``<stem>_atc.onnx``). OM files carry no
metadata, so the spec is written beside the model as ``<stem>.unideploy.json`` (with what ATC was told under
``extra.om``), where :func:`unideploy.read_spec` and the ascend/acl backends find it.

Target options (``--option KEY=VALUE`` / ``export(..., KEY=VALUE)``): ``soc``, ``precision_mode``,
``dynamic_batch`` ("1,2,4,8"), ``dynamic_hw`` ("640,640;480,640"), ``output_type`` (FP32, FP16, UINT8, INT8),
``log`` (debug, info, warning, error, null), ``atc`` (path of the atc binary), ``atc_args`` (extra flags),
``aipp`` (true: preprocessing in the model, below).

**AIPP** (``--option aipp=true``): the preprocessing after the letterbox moves onto the NPU's AI pre-processing
unit. A static AIPP config (``<stem>_aipp.cfg``, ``aipp_op`` with ``input_format: RGB888_U8``, ``csc_switch: false``,
``rbuv_swap_switch``, ``mean_chn_*``/``min_chn_*``/``var_reci_chn_*`` from the family's scale, mean and std; see
:func:`unideploy.runtime.backends.in_model.aipp_fields`) goes to ATC with ``--insert_op_conf``, and the sidecar
spec says ``in_model="aipp"``: the ascend and acl backends then feed the letterboxed image as uint8 NHWC BGR (a
quarter of the bytes of float32 NCHW to copy to the device, and no float work on the host). Not combinable with
``dynamic_hw`` (static AIPP fixes the image size). Checked in CI against ATC's documented fields by the test
doubles, which apply the config; not yet run on Ascend hardware.

Example:
    >>> import unideploy
    >>> unideploy.export("yolov8n.pt", to="om", soc="Ascend310P3", dynamic_batch="1,2,4,8")  # doctest: +SKIP
    PosixPath('yolov8n.om')
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unideploy.core.errors import BackendError, BackendUnavailableError, InputError, ModelError
from unideploy.core.spec import ModelSpec, sidecar_paths
from unideploy.runtime.backends.in_model import aipp_config, aipp_fields, in_model_spec, network_spec

#: --precision_mode values documented for ATC (CANN 6.x-8.x)
PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision",
                   "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16", "force_fp32",
                   "cube_fp16in_fp32out")
OUTPUT_TYPES = ("FP32", "FP16", "UINT8", "INT8")
LOG_LEVELS = ("debug", "info", "warning", "error", "null")
#: ATC: "(1,100] gears", each "recommended within [1, 2048]"
MAX_GEARS = 100
MAX_BATCH = 2048


@dataclass
class AtcPlan:
    """Everything ATC is told, and the command line that tells it."""

    onnx: Path
    output: Path  # the .om path ATC will write
    input_name: str
    input_shape: tuple[int, int, int, int]
    soc: str
    dynamic_batch: list[int] = field(default_factory=list)
    dynamic_hw: list[tuple[int, int]] = field(default_factory=list)
    precision_mode: str | None = None
    output_type: str = "FP32"
    log: str = "error"
    atc: str = "atc"
    extra_args: list[str] = field(default_factory=list)
    #: static AIPP fields (ATC's names) and the config file they are written to; the spec with ``in_model="aipp"``
    aipp: dict[str, Any] | None = None
    aipp_conf: Path | None = None
    aipp_spec: ModelSpec | None = None

    @property
    def mode(self) -> str:
        return "dymbatch" if self.dynamic_batch else "dymhw" if self.dynamic_hw else "static"

    def command(self) -> list[str]:
        """The ATC argv, one documented ``--flag=value`` per item."""
        n, c, h, w = self.input_shape
        if self.dynamic_batch:
            n = -1
        if self.dynamic_hw:
            h = w = -1
        out_base = self.output.with_suffix("") if self.output.suffix.lower() == ".om" else self.output
        cmd = [self.atc, f"--model={self.onnx}", "--framework=5", f"--output={out_base}",
               f"--soc_version={self.soc}", "--input_format=NCHW", f"--input_shape={self.input_name}:{n},{c},{h},{w}"]
        if self.dynamic_batch:
            cmd.append(f"--dynamic_batch_size={','.join(str(b) for b in self.dynamic_batch)}")
        if self.dynamic_hw:
            cmd.append(f"--dynamic_image_size={';'.join(f'{a},{b}' for a, b in self.dynamic_hw)}")
        if self.precision_mode:
            cmd.append(f"--precision_mode={self.precision_mode}")
        if self.aipp_conf is not None:
            cmd.append(f"--insert_op_conf={self.aipp_conf}")
        cmd += [f"--output_type={self.output_type}", f"--log={self.log}", *self.extra_args]
        return cmd

    def shell(self) -> str:
        """The command as one line to paste into a shell (values quoted where the shell needs it)."""
        return shlex.join(self.command())

    def om_info(self) -> dict[str, Any]:
        """What the backends need to know about the OM (stored under ``extra.om`` in the sidecar)."""
        return {"mode": self.mode, "soc": self.soc, "input_name": self.input_name, "input_shape": list(self.input_shape),
                "dynamic_batch": self.dynamic_batch, "dynamic_hw": [list(hw) for hw in self.dynamic_hw],
                "precision_mode": self.precision_mode or "force_fp16 (ATC default)", "output_type": self.output_type,
                "atc_command": self.shell(), "aipp": self.aipp,
                "aipp_config": self.aipp_conf.name if self.aipp_conf is not None else None}


def parse_gears(value: Any, what: str) -> list[int]:
    """``"1,2,4,8"`` / ``[1, 2, 4, 8]`` -> sorted unique gears, validated against ATC's limits.

    Raises:
        InputError: fewer than 2 or more than 100 gears, or a gear outside [1, 2048].

    Example:
        >>> parse_gears("8,1,4", "dynamic_batch")
        [1, 4, 8]
    """
    items = value if isinstance(value, (list, tuple)) else re.split(r"[,\s]+", str(value).strip())
    try:
        gears = sorted({int(v) for v in items if str(v).strip()})
    except ValueError:
        raise InputError(f"{what} must be comma-separated batch sizes like 1,2,4,8; got {value!r}") from None
    if not 2 <= len(gears) <= MAX_GEARS:
        raise InputError(f"{what} needs between 2 and {MAX_GEARS} gears (ATC --dynamic_batch_size); got {gears}")
    bad = [g for g in gears if not 1 <= g <= MAX_BATCH]
    if bad:
        raise InputError(f"{what} gears must lie in [1, {MAX_BATCH}]; got {bad}")
    return gears


def parse_hw_gears(value: Any, stride: int = 1) -> list[tuple[int, int]]:
    """``"640,640;480,640"`` / ``[(640, 640), (480, 640)]`` -> [(h, w), ...] (2-100 gears, multiples of ``stride``).

    Raises:
        InputError: malformed, too few or too many gears, or a size not a multiple of ``stride``.

    Example:
        >>> parse_hw_gears("640,640;480,640", 32)
        [(640, 640), (480, 640)]
    """
    pairs: list[tuple[int, int]] = []
    items = value if isinstance(value, (list, tuple)) else [p for p in str(value).split(";") if p.strip()]
    for item in items:
        parts = item if isinstance(item, (list, tuple)) else str(item).split(",")
        try:
            h, w = (int(v) for v in parts)
        except ValueError:
            raise InputError(f"dynamic_hw must be gears like 640,640;480,640 (height,width;...); got {value!r}") from None
        if h < 1 or w < 1 or h % stride or w % stride:
            raise InputError(f"dynamic_hw gear {h},{w} must be positive multiples of the model stride {stride}")
        if (h, w) not in pairs:
            pairs.append((h, w))
    if not 2 <= len(pairs) <= MAX_GEARS:
        raise InputError(f"dynamic_hw needs between 2 and {MAX_GEARS} gears (ATC --dynamic_image_size); got {len(pairs)}")
    return pairs


_NPU_SMI_ROW = re.compile(r"^\|\s*\d+\s+([0-9]{3}[0-9A-Za-z]*)\s+\|")


def soc_from_npu_smi(text: str) -> str | None:
    """The SoC version (``Ascend`` + chip name) from the first NPU row of ``npu-smi info``.

    Example:
        >>> soc_from_npu_smi("| 0       310P3                 | OK              | NA  44  0 / 0 |")
        'Ascend310P3'
    """
    for line in text.splitlines():
        m = _NPU_SMI_ROW.match(line.strip())
        if m:
            return "Ascend" + m.group(1)
    return None


def detect_soc() -> str | None:
    """Read the SoC from ``npu-smi info`` when that tool is on PATH (an Ascend host), else None."""
    exe = shutil.which("npu-smi")
    if not exe:
        return None
    try:
        res = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return soc_from_npu_smi(res.stdout) if res.returncode == 0 else None


def onnx_input(onnx_path: Path) -> tuple[str, list[int | None]]:
    """Name and shape (None for symbolic dims) of the ONNX model's first graph input that is not an initializer."""
    try:
        import onnx
    except ImportError:
        raise BackendUnavailableError("export to om needs the 'onnx' package; install it with: pip install 'unideploy[export]'") from None
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim]
        return inp.name, dims
    raise ModelError(f"{onnx_path}: the ONNX graph has no input")


def plan_atc(onnx_path: Path, spec: ModelSpec, out: Path, extra: dict[str, Any], *, batch: int | None = None,
             dynamic: bool = False, keep_onnx: Path | None = None) -> AtcPlan:
    """Decide every ATC flag from the ONNX model, the spec and the target options (nothing runs).

    Raises:
        InputError: an option is invalid (unknown key, bad precision mode, bad gears, both kinds of gears,
            no SoC known).
    """
    known = {"soc", "precision_mode", "dynamic_batch", "dynamic_hw", "output_type", "log", "atc", "atc_args", "aipp"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise InputError(f"unknown om option(s) {unknown}; valid: {', '.join(sorted(known))}")
    name, dims = onnx_input(onnx_path)
    if len(dims) != 4:
        raise ModelError(f"{onnx_path}: expected a 4-D image input (N,C,H,W), got {len(dims)} dims for '{name}'")
    h, w = spec.imgsz if spec.imgsz else (dims[2], dims[3])
    if h is None or w is None:
        raise InputError("the ONNX input has a dynamic image size and no imgsz is known; pass --imgsz")
    c = dims[1] or 3
    n = int(batch or dims[0] or 1)
    precision = extra.get("precision_mode")
    if precision is not None and precision not in PRECISION_MODES:
        raise InputError(f"precision_mode must be one of {', '.join(PRECISION_MODES)}; got {precision!r}")
    output_type = str(extra.get("output_type", "FP32")).upper()
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {extra.get('output_type')!r}")
    log = str(extra.get("log", "error")).lower()
    if log not in LOG_LEVELS:
        raise InputError(f"log must be one of {', '.join(LOG_LEVELS)}; got {extra.get('log')!r}")
    dyn_batch = parse_gears(extra["dynamic_batch"], "dynamic_batch") if extra.get("dynamic_batch") else []
    dyn_hw = parse_hw_gears(extra["dynamic_hw"], spec.stride) if extra.get("dynamic_hw") else []
    if dynamic and not dyn_batch and not dyn_hw:
        dyn_batch = [1, 2, 4, 8, 16]
    if dyn_batch and dyn_hw:
        raise InputError("ATC cannot combine --dynamic_batch_size and --dynamic_image_size; give dynamic_batch or dynamic_hw")
    if dyn_hw and (h, w) not in dyn_hw:
        dyn_hw.insert(0, (int(h), int(w)))  # the spec's size must be one of the gears
    soc = extra.get("soc") or detect_soc()
    if not soc:
        raise InputError("the Ascend SoC version is needed (npu-smi is not here to read it): pass --option soc=Ascend310P3 "
                         "(or Ascend310, Ascend310B1, Ascend910B3 ...; see 'npu-smi info' on the target)")
    args = extra.get("atc_args") or []
    args = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    plan = AtcPlan(keep_onnx or onnx_path, out, name, (n, int(c), int(h), int(w)), str(soc), dyn_batch, dyn_hw,
                   precision, output_type, log, str(extra.get("atc") or "atc"), args)
    if _flag(extra.get("aipp", False), "aipp"):
        if dyn_hw:
            raise InputError("aipp: static AIPP fixes the image size; it cannot be combined with dynamic_hw")
        if int(c) != 3:
            raise InputError(f"aipp: the model input must have 3 channels (NCHW), got {c}")
        full = network_spec(onnx_path, spec)
        plan.aipp = aipp_fields(full, int(h), int(w))
        plan.aipp_conf = out.with_name(out.stem + "_aipp.cfg")
        plan.aipp_spec = in_model_spec(full, "aipp", "bgr")
    return plan


def _flag(value: Any, what: str) -> bool:
    text = str(value).strip().lower()
    if value is True or text in ("1", "true", "yes", "on"):
        return True
    if value is False or value is None or text in ("0", "false", "no", "off", ""):
        return False
    raise InputError(f"om option {what} must be true or false, got {value!r}")




def write_sidecar(out: Path, spec: ModelSpec, plan: AtcPlan) -> Path:
    """Write ``<stem>.unideploy.json`` beside the OM: the spec, with what ATC was told under ``extra.om``."""
    d = (plan.aipp_spec or spec).to_dict()  # with AIPP: uint8 NHWC BGR input, in_model="aipp"
    d["extra"] = {**d.get("extra", {}), "om": plan.om_info()}
    d["batch"] = None if plan.dynamic_batch else plan.input_shape[0]
    side = sidecar_paths(out)[0]
    side.parent.mkdir(parents=True, exist_ok=True)
    side.write_text(json.dumps(d, indent=2, sort_keys=True))
    return side


def onnx_to_om(onnx_path: Path, spec: ModelSpec, opts: Any) -> Path:
    """Convert ONNX to an Ascend OM with ATC and write the sidecar spec (the ``om`` export target).

    Raises:
        BackendUnavailableError: ``atc`` is not on PATH (the message holds the exact command to run).
        BackendError: ATC ran and failed (the message holds its last error lines).
        InputError: invalid target options.

    Example:
        >>> import unideploy
        >>> unideploy.export("yolov8n.onnx", to="om", soc="Ascend310P3")  # doctest: +SKIP
    """
    out = opts.output(".om")
    if out.suffix.lower() != ".om":
        out = out / f"{opts.base.name}.om" if out.is_dir() or not out.suffix else out.with_suffix(".om")
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = out.with_name(out.stem + "_atc.onnx")
    plan = plan_atc(onnx_path, spec, out, dict(opts.extra), batch=opts.batch, dynamic=opts.dynamic, keep_onnx=kept)
    shutil.copyfile(onnx_path, kept)
    if plan.aipp_conf is not None and plan.aipp is not None:
        plan.aipp_conf.write_text(aipp_config(plan.aipp) + "\n")
    side = write_sidecar(out, spec, plan)
    exe = shutil.which(plan.atc)
    if exe is None:
        raise BackendUnavailableError(
            f"'{plan.atc}' (the Ascend Tensor Compiler from the CANN toolkit) is not on PATH here. On the Ascend host, "
            f"after 'source /usr/local/Ascend/ascend-toolkit/set_env.sh', run:\n  {plan.shell()}\n"
            f"then keep {side.name} beside {out.name} (already written to {side})"
            + (f"; the AIPP config is {plan.aipp_conf}" if plan.aipp_conf is not None else "")
        )
    cmd = plan.command()
    cmd[0] = exe
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not out.is_file():
        tail = [ln for ln in (res.stdout + "\n" + res.stderr).splitlines() if ln.strip()][-6:]
        raise BackendError(f"atc failed (exit {res.returncode}) converting {onnx_path.name}:\n  " + "\n  ".join(tail)
                           + f"\ncommand: {plan.shell()}")
    kept.unlink(missing_ok=True)
    return out


__all__ = ["AtcPlan", "PRECISION_MODES", "detect_soc", "onnx_to_om", "parse_gears", "parse_hw_gears", "plan_atc",
           "soc_from_npu_smi", "write_sidecar"]
