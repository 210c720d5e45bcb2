"""ONNX export: Ultralytics checkpoints/configs through Ultralytics' own exporter, any ``torch.nn.Module``
through ``torch.onnx.export``, and the final ``.onnx`` artefact with its spec embedded.

The ``from_*`` functions write an FP32 ONNX file into a work folder and return it with its spec; the
``onnx`` target (:func:`write_onnx`) then converts weights to FP16 if asked and embeds the spec.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from unideploy.core.errors import InputError, ModelError
from unideploy.core.onnx_file import read_onnx_metadata
from unideploy.core.spec import ModelSpec, spec_from_metadata
from unideploy.runtime.open import read_spec
from unideploy.tools.convert import ExportOptions, require
from unideploy.tools.convert.metadata import embed_onnx
from unideploy.tools.convert.passes import apply_torch_passes, set_static_input

#: opset for torch.nn.Module exports when none is given (runtimes and NPU compilers all read it)
DEFAULT_OPSET = 17


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _finish_spec(d: dict[str, Any], overrides: dict[str, Any], opts: ExportOptions, imgsz: tuple[int, int] | None,
                 batch: int | None, extra: dict[str, Any]) -> ModelSpec:
    d = dict(d)
    d.update({k: v for k, v in overrides.items() if v is not None and k != "extra"})
    d["extra"] = {**d.get("extra", {}), **overrides.get("extra", {}), **extra}
    if imgsz is not None:
        d["imgsz"] = imgsz
    d["batch"] = None if opts.dynamic else batch
    return ModelSpec.from_dict(d)


# ------------------------------------------------------------------------------------- Ultralytics

def from_ultralytics(src: Path, overrides: dict[str, Any], opts: ExportOptions, work: Path) -> tuple[Path, ModelSpec]:
    """Export an Ultralytics ``.pt`` (or ``.yaml``: random weights) to ONNX with Ultralytics' exporter, offline."""
    require("torch", "ultralytics", "exporting an Ultralytics model")
    require("ultralytics", "ultralytics", "exporting an Ultralytics model")
    require("onnx", "export", "exporting to ONNX")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    from ultralytics import __version__ as ul_version

    try:
        yolo = YOLO(str(src))
    except Exception as e:  # noqa: BLE001 - Ultralytics raises many types for a bad file
        raise ModelError(f"{src}: Ultralytics could not load it as a model: {_first_line(e)}") from None
    net = yolo.model
    if not hasattr(net, "yaml"):
        raise ModelError(f"{src}: expected an Ultralytics model, got {type(net).__name__}")
    apply_torch_passes(net, opts.passes)
    # Ultralytics writes next to ``pt_path``: point it into the work folder so nothing lands beside the source
    net.pt_path = str(work / f"{src.stem}.pt")
    kwargs: dict[str, Any] = dict(format="onnx", dynamic=opts.dynamic, simplify=opts.simplify, device="cpu",
                                  verbose=False, batch=opts.batch or 1)
    if opts.imgsz is not None:
        kwargs["imgsz"] = list(opts.imgsz)
    if opts.opset is not None:
        kwargs["opset"] = int(opts.opset)
    try:
        out = Path(yolo.export(**kwargs))
    except Exception as e:  # noqa: BLE001 - the exporter's failures are about this model and these flags
        raise ModelError(f"{src}: Ultralytics could not export it to ONNX: {_first_line(e)}") from None
    dest = work / f"{src.stem}.onnx"
    if out.resolve() != dest.resolve():
        shutil.move(str(out), dest)
    d = spec_from_metadata(read_onnx_metadata(dest))
    meta_imgsz = d.get("imgsz")
    extra = {"source": src.name, "exporter": f"ultralytics {ul_version}"}
    return dest, _finish_spec(d, overrides, opts, meta_imgsz, opts.batch or 1, extra)


# ------------------------------------------------------------------------------------ torch module

def _as_tensor_input(example_input: Any, opts: ExportOptions, overrides: dict[str, Any]) -> Any:
    import torch

    if example_input is None:
        size = opts.imgsz or (ModelSpec(imgsz=overrides["imgsz"]).imgsz if overrides.get("imgsz") else None)
        if size is None:
            raise InputError("exporting a torch.nn.Module needs example_input (a tensor N,C,H,W) or imgsz")
        return torch.zeros(opts.batch or 1, 3, *size)
    if isinstance(example_input, torch.Tensor):
        if example_input.ndim != 4:
            raise InputError(f"example_input must be an image batch (N,C,H,W), got shape {tuple(example_input.shape)}")
        if opts.imgsz is not None and tuple(example_input.shape[2:]) != tuple(opts.imgsz):
            raise InputError(f"example_input is {tuple(example_input.shape)} but imgsz {opts.imgsz} was asked for")
        return example_input
    raise InputError(f"example_input must be a torch.Tensor (N,C,H,W), got {type(example_input).__name__}")


def from_torch(module: Any, example_input: Any, overrides: dict[str, Any], opts: ExportOptions, work: Path) -> tuple[Path, ModelSpec]:
    """Export a ``torch.nn.Module`` with ``torch.onnx.export`` (TorchScript exporter, constant folding on).

    The input is named ``images``, outputs ``output0``, ``output1``, ...; with ``dynamic`` the batch, height
    and width axes are dynamic.
    """
    torch = require("torch", "export", "exporting a torch.nn.Module")
    require("onnx", "export", "exporting to ONNX")
    import copy

    if not isinstance(module, torch.nn.Module):
        raise InputError(f"model must be a path or a torch.nn.Module, got {type(module).__name__}")
    if not overrides:
        raise InputError("exporting a torch.nn.Module needs spec=... (at least task and names; e.g. "
                         "{'task': 'detect', 'names': {0: 'person'}, 'family': 'yolo'})")
    x = _as_tensor_input(example_input, opts, overrides)
    net = copy.deepcopy(module).eval()
    apply_torch_passes(net, opts.passes)
    with torch.no_grad():
        y = net(x)
    n_out = len(y) if isinstance(y, (list, tuple)) else 1
    output_names = [f"output{i}" for i in range(n_out)]
    dynamic_axes = None
    if opts.dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, **{o: {0: "batch"} for o in output_names}}
    dest = work / f"{opts.base.name}.onnx"
    kwargs: dict[str, Any] = {"dynamo": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(dest), opset_version=int(opts.opset or DEFAULT_OPSET),
                              input_names=["images"], output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - tracing failures are about the user's module
        raise ModelError(f"torch.onnx.export could not export {type(module).__name__}: {_first_line(e)}") from None
    if opts.simplify:
        _simplify(dest)
    imgsz = (int(x.shape[2]), int(x.shape[3]))
    extra = {"source": type(module).__name__, "exporter": f"torch {torch.__version__}"}
    return dest, _finish_spec({}, overrides, opts, imgsz, int(x.shape[0]), extra)


def _simplify(path: Path) -> None:
    """onnxslim the file in place when onnxslim is installed (it is part of the ``export`` extra)."""
    import importlib.util

    if importlib.util.find_spec("onnxslim") is None:
        warnings.warn("onnxslim is not installed: the ONNX graph is left unsimplified (pip install 'unideploy[export]')",
                      stacklevel=3)
        return
    import onnx
    import onnxslim

    model = onnxslim.slim(onnx.load(str(path)))
    onnx.save(model, str(path))


# -------------------------------------------------------------------------------------------- ONNX

def from_onnx(src: Path, overrides: dict[str, Any], opts: ExportOptions, work: Path) -> tuple[Path, ModelSpec]:
    """Take an ONNX file as the starting point (copied; ``imgsz``/``batch`` fix a dynamic input)."""
    onnx = require("onnx", "export", "rewriting ONNX models")
    if opts.dynamic:
        raise InputError(f"{src}: an ONNX source keeps its input shape; --dynamic applies to .pt/.yaml/module exports")
    dest = work / src.name
    shutil.copyfile(src, dest)
    spec = read_spec(src, None)
    if opts.imgsz is not None or opts.batch is not None:
        try:
            model = onnx.load(str(dest))
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"{src}: expected an ONNX model, could not load it: {_first_line(e)}") from None
        if set_static_input(model, opts.batch or 1, opts.imgsz or spec.imgsz):
            onnx.save(model, str(dest))
    d = {k: v for k, v in spec.to_dict().items()}
    imgsz = opts.imgsz or spec.imgsz
    batch = opts.batch or _onnx_batch(dest)
    return dest, _finish_spec(d, overrides, opts, imgsz, batch, {"source": src.name})


def _onnx_batch(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits:
            dims = i.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
            return None
    return None


# ------------------------------------------------------------------------------------ onnx target

def write_onnx(onnx_path: Path, spec: ModelSpec, opts: ExportOptions) -> Path:
    """The ``onnx`` target: FP16 weights if asked (inputs/outputs stay float32), spec embedded, saved at ``out``."""
    onnx = require("onnx", "export", "exporting to ONNX")
    out = opts.output(".onnx")
    if out.suffix.lower() != ".onnx":
        out = out / f"{opts.base.name}.onnx"
    if opts.out is None and out.exists() and spec.extra.get("source") == out.name:
        out = opts.base.with_name(opts.base.name + "_unideploy.onnx")  # never overwrite the source by default
    model = onnx.load(str(onnx_path))
    if opts.half:
        from onnxruntime.transformers import float16

        model = float16.convert_float_to_float16(model, keep_io_types=True)
    embed_onnx(model, spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out
