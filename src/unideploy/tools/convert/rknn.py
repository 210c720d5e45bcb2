"""The ``rknn`` target: ONNX -> Rockchip ``.rknn`` with rknn-toolkit2, run in an isolated environment.

rknn-toolkit2 pins numpy <= 1.26.4, onnx <= 1.18 and torch <= 2.4, which would break the user's main
environment, so unideploy never installs or imports it there. It creates (on first use, with
``install=True`` / ``--option install=1``) a private venv at ``~/.cache/unideploy/rknn-toolkit2/`` (or
``$UNIDEPLOY_RKNN_VENV``) and drives the toolkit through ``rknn_worker.py`` in a subprocess
(:mod:`unideploy.runtime.backends.rknn_toolkit`, shared with the ``rknn`` backend's simulator).
``$UNIDEPLOY_RKNN_PYTHON`` points at an existing interpreter that has rknn-toolkit2 instead.

The model takes uint8 NHWC in the network's channel order (the letterboxed image): normalisation
(``spec.scale``/``mean``/``std``, the family's) is baked in with ``config(mean_values=..., std_values=...)``, and the
sidecar spec says ``in_model="rknn"`` (preprocessing in the model, as OpenVINO's PrePostProcessor and Ascend AIPP;
see :mod:`unideploy.runtime.backends.in_model`). INT8 calibrates on images passed through the
model's own letterbox (``--option calib=DIR``, ``calib_count``). The sidecar spec (``<stem>.unideploy.json``)
records the target, dtype and the ONNX kept beside the model (``<stem>_rknn.onnx``), which the x86
simulator needs (it cannot run a .rknn file; it rebuilds from the ONNX).

Target options: ``target`` (rk3588, rk3576, rk3568, rk3566, rk3562, rv1103, rv1106, ...), ``dtype`` (fp16 or
int8), ``calib``, ``calib_count``, ``install``, ``quantized_algorithm`` (normal, mmse, kl_divergence),
``disable_rules`` (toolkit fusion rules to skip, comma-separated; default ``seperate_conv_rs_split``, which
rknn-toolkit2 2.5.0 crashes in on the YOLOv8/11 DFL head; ``none`` skips none).

A single output that is a Concat of differently scaled tensors (a YOLO head: box pixels next to 0-1 class
scores) loses the scores under one INT8 scale, so INT8 models end the graph before that Concat
(``load_onnx(outputs=...)``, recorded as ``extra.rknn.split_outputs``) and the backend concatenates again.
Nested Concats on the same axis (-seg/-pose/-obb heads) are opened too, and a model's other outputs (-seg
prototypes) follow the parts unchanged (``extra.rknn.concat_parts`` parts are joined).

Example:
    >>> import unideploy
    >>> unideploy.export("yolov8n.pt", to="rknn", target="rk3588", dtype="int8", calib="images/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from unideploy.core.errors import InputError
from unideploy.core.spec import ModelSpec, sidecar_paths
from unideploy.runtime.backends.in_model import in_model_spec, network_spec
from unideploy.runtime.backends.rknn_toolkit import (
    DISABLE_RULES, ToolkitWorker, calibration_set, rknn_config, toolkit_python,
)

TARGETS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1103", "rv1106", "rv1103b", "rv1106b", "rv1126b", "rk2118")
DTYPES = ("fp16", "int8")


def split_outputs(onnx_path: Path) -> tuple[list[str], int, int] | None:
    """Where an INT8 graph should end: the inputs of the Concat that makes the first output (a YOLO head), with
    nested Concats on the same axis opened too (a -seg/-pose/-obb head concatenates the detection head's Concat
    with its mask coefficients / keypoints / angle), then the model's other outputs (a -seg model's prototypes)
    unchanged. Returns (tensor names, concat axis, how many leading names are concatenated again), else None."""
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1

    def concat_axis(name: str) -> int | None:
        node = producer.get(name)
        if node is None or node.op_type != "Concat" or len(node.input) < 2:
            return None
        return next((int(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "axis"), None)

    if not g.output:
        return None
    axis = concat_axis(g.output[0].name)
    if axis is None:
        return None

    def parts(name: str) -> list[str]:
        if name != g.output[0].name and (uses.get(name, 0) != 1 or concat_axis(name) != axis):
            return [name]
        return [p for i in producer[name].input for p in parts(i)]

    joined = parts(g.output[0].name)
    return [*joined, *(o.name for o in g.output[1:])], axis, len(joined)


def onnx_to_rknn(onnx_path: Path, spec: ModelSpec, opts: Any) -> Path:
    """Convert ONNX to .rknn in the isolated toolkit environment and write the sidecar spec (the ``rknn`` target).

    Raises:
        InputError: unknown target/dtype/option, INT8 without calibration images.
        BackendUnavailableError: the toolkit environment is missing (and install was not asked for).
        BackendError: the toolkit failed (the message names the call and its return code).
    """
    extra = dict(opts.extra)
    known = {"target", "dtype", "calib", "calib_count", "install", "quantized_algorithm", "verbose", "disable_rules"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise InputError(f"unknown rknn option(s) {unknown}; valid: {', '.join(sorted(known))}")
    target = str(extra.get("target", "rk3588")).lower()
    if target not in TARGETS:
        raise InputError(f"rknn target must be one of {', '.join(TARGETS)}; got {target!r}")
    dtype = str(extra.get("dtype", "int8" if extra.get("calib") else "fp16")).lower()
    if dtype not in DTYPES:
        raise InputError(f"rknn dtype must be fp16 or int8; got {dtype!r}")
    if dtype == "int8" and not extra.get("calib"):
        raise InputError("rknn int8 needs calibration images: --option calib=DIR (20-200 images like the deployment's)")
    if spec.imgsz is None:
        raise InputError("the model's input size is unknown; pass --imgsz")
    out = opts.output(".rknn")
    if out.suffix.lower() != ".rknn":
        out = out / f"{opts.base.name}.rknn"
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = out.with_name(out.stem + "_rknn.onnx")
    shutil.copyfile(onnx_path, kept)
    python = toolkit_python(install=str(extra.get("install", "")).lower() in ("1", "true", "yes"))
    full = network_spec(kept, spec)  # the family's colour order, scale, mean/std: what goes into the model
    mean, std = rknn_config(full)
    rules = extra.get("disable_rules", ",".join(DISABLE_RULES))
    rules = [r.strip() for r in str(rules).split(",") if r.strip() and r.strip().lower() != "none"]
    split = split_outputs(kept) if dtype == "int8" else None
    calib = extra.get("calib")
    if calib and Path(str(calib)).exists():
        calib = str(Path(str(calib)).resolve())  # the simulator re-calibrates from it, maybe from another cwd
    worker = ToolkitWorker(python)
    try:
        dataset = None
        if dtype == "int8":
            dataset = str(calibration_set(spec, calib, int(extra.get("calib_count", 100)), worker.tmp))
        worker.request(cmd="build", onnx=str(kept), target=target, dtype=dtype, dataset=dataset, mean=mean, std=std,
                       out=str(out), quantized_algorithm=extra.get("quantized_algorithm", "normal"),
                       verbose=bool(extra.get("verbose", False)), disable_rules=rules,
                       outputs=split[0] if split else None)
    finally:
        worker.close()
    d = in_model_spec(full, "rknn", full.channel_order).to_dict()  # uint8 NHWC in the network's channel order
    d.update(batch=1)
    d["extra"] = {**d.get("extra", {}), "rknn": {"target": target, "dtype": dtype, "onnx": kept.name, "mean": mean,
                                                  "std": std, "quantized_algorithm": extra.get("quantized_algorithm", "normal"),
                                                  "calib": str(calib) if calib else None, "disable_rules": rules,
                                                  "split_outputs": split[0] if split else None,
                                                  "concat_axis": split[1] if split else None,
                                                  "concat_parts": split[2] if split else None}}
    sidecar_paths(out)[0].write_text(json.dumps(d, indent=2, sort_keys=True))
    return out


__all__ = ["TARGETS", "DTYPES", "ToolkitWorker", "calibration_set", "onnx_to_rknn", "rknn_config", "split_outputs",
           "toolkit_python"]
