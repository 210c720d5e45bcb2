"""Export and convert models: PyTorch / Ultralytics -> ONNX -> OpenVINO IR, and further targets by registry.

Every export goes through ONNX::

    .pt / .yaml (Ultralytics exporter) ─┐
    torch.nn.Module (torch.onnx)       ─┼─► ONNX ─► graph passes ─► target exporter ─► artefact + embedded spec
    .onnx (as given)                   ─┘

A target is one function registered in :data:`EXPORTERS` as ``"package.module:function"`` with the
signature ``fn(onnx_path: Path, spec: ModelSpec, options: ExportOptions) -> Path``. It receives an ONNX
file (FP32, passes applied, spec not yet embedded), writes its artefact at ``options.out`` (or a default
derived from ``options.base``), embeds ``spec`` in the format's own metadata where it has some, and returns
the artefact's path. It imports its tools lazily and calls :func:`require` so that a missing tool raises
:class:`~unideploy.core.errors.BackendUnavailableError` naming the pip extra. Adding a target (om, rknn,
engine ...) = one module + one ``EXPORTERS.register`` line; ``unideploy export --to NAME`` picks it up.

Example:
    >>> import unideploy
    >>> onnx_path = unideploy.export("yolov8n.pt", to="onnx", imgsz=640)  # doctest: +SKIP
    >>> xml_path = unideploy.export(onnx_path, to="openvino", half=True)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from unideploy.core.errors import BackendUnavailableError, InputError, ModelError
from unideploy.core.registry import Registry
from unideploy.core.spec import ModelSpec, _pair

#: target name -> "module:function" (see the module docstring for the contract); each target also answers to the
#: name of the backend that runs its artefact (``--to tensorrt`` is ``--to engine``)
EXPORTERS: Registry[Callable[..., Path]] = Registry("export target", error=InputError, choices="valid targets")
EXPORTERS.register("onnx", "unideploy.tools.convert.onnx:write_onnx", aliases=("onnxruntime", "ort"))
EXPORTERS.register("openvino", "unideploy.tools.convert.openvino:onnx_to_openvino", aliases=("ov",))
EXPORTERS.register("om", "unideploy.tools.convert.om:onnx_to_om", aliases=("ascend", "ascend-om"))
EXPORTERS.register("rknn", "unideploy.tools.convert.rknn:onnx_to_rknn")
EXPORTERS.register("engine", "unideploy.tools.convert.tensorrt:onnx_to_engine", aliases=("tensorrt", "trt"))

#: model file suffixes export accepts, and what reads them
SOURCE_SUFFIXES = {".pt": "Ultralytics checkpoint", ".yaml": "Ultralytics model config", ".yml": "Ultralytics model config",
                   ".onnx": "ONNX model"}


@dataclass
class ExportOptions:
    """Options shared by every target; target-specific ones go in ``extra``.

    Attributes:
        out: output path asked for (file or folder, target-specific), or None for the default.
        base: output path without suffix used for defaults (``dir/stem``); the target adds its suffix.
        imgsz: (height, width) of a static input; None keeps the source's.
        batch: static batch size (None: the source's, or 1); with ``dynamic`` the batch of the example input.
        dynamic: dynamic batch and image size.
        opset: ONNX opset (None: the exporter's default).
        half: FP16 weights (ONNX: float16 graph with float32 inputs/outputs; OpenVINO: compressed weights).
        simplify: simplify the ONNX graph (onnxslim) after export.
        passes: names of graph passes to apply (see :mod:`unideploy.tools.convert.passes`).
        extra: target-specific options (``--option KEY=VALUE`` on the command line).
    """

    out: Path | None = None
    base: Path = Path("model")
    imgsz: tuple[int, int] | None = None
    batch: int | None = None
    dynamic: bool = False
    opset: int | None = None
    half: bool = False
    simplify: bool = True
    passes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def output(self, suffix: str) -> Path:
        """``out`` if given, else ``base`` + ``suffix`` (suffix may be a folder/file pair like ``_openvino_model/x.xml``)."""
        if self.out is not None:
            return Path(self.out)
        return self.base.with_name(self.base.name + suffix)


def require(module: str, extra: str, what: str) -> Any:
    """Import ``module`` for ``what``, or raise BackendUnavailableError naming the pip extra.

    Example:
        >>> ov = require("openvino", "openvino", "export to OpenVINO IR")  # doctest: +SKIP
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise BackendUnavailableError(
            f"{what} needs the Python module '{module}', which is not installed; install it with: pip install 'unideploy[{extra}]'"
        )
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailableError(f"{what}: importing '{module}' failed: {e}") from None


def list_targets() -> list[str]:
    """Names of the registered export targets.

    Example:
        >>> "openvino" in list_targets()
        True
    """
    return EXPORTERS.names()


def get_exporter(target: str) -> Callable[..., Path]:
    """The exporter function registered for ``target`` (a target name or the backend name that runs it).

    Raises:
        InputError: no such target (the message lists the valid ones).

    Example:
        >>> get_exporter("tensorrt") is get_exporter("engine")  # doctest: +SKIP
        True
    """
    return EXPORTERS.get(target)


def _spec_overrides(spec: ModelSpec | dict | None) -> dict[str, Any]:
    """Spec fields given by the caller: all of a ModelSpec, or the keys of a dict (checked against the fields)."""
    if spec is None:
        return {}
    if isinstance(spec, ModelSpec):
        return spec.to_dict()
    if isinstance(spec, dict):
        from dataclasses import fields

        known = {f.name for f in fields(ModelSpec)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise InputError(f"unknown model spec field(s) {unknown}; valid fields: {sorted(known)}")
        return dict(spec)
    raise InputError(f"spec must be a ModelSpec or a dict of its fields, got {type(spec).__name__}")


def export(
    model: Any,
    example_input: Any = None,
    *,
    to: str = "onnx",
    out: str | os.PathLike | None = None,
    spec: ModelSpec | dict | None = None,
    imgsz: int | Sequence[int] | None = None,
    batch: int | None = None,
    dynamic: bool = False,
    opset: int | None = None,
    half: bool = False,
    simplify: bool = True,
    passes: Sequence[str] | str | None = None,
    **extra: Any,
) -> Path:
    """Export a model to a deployable artefact that carries its model spec.

    Args:
        model: an Ultralytics ``.pt`` checkpoint or ``.yaml`` config (random weights), an ``.onnx`` file, or a
            ``torch.nn.Module`` (then ``example_input`` and ``spec`` are needed).
        example_input: a tensor of the input shape (N, C, H, W), for a ``torch.nn.Module``.
        to: target name, one of :func:`list_targets` ("onnx", "openvino", ...).
        out: output file or folder (default: beside the source, named after it).
        spec: model spec (ModelSpec or dict): names, task, family, normalisation. Required for a module;
            for other sources it overrides what their metadata says.
        imgsz: static input size (int or (h, w)); default: the example input's, the checkpoint's, or 640.
        batch: static batch size (default 1). dynamic: dynamic batch and image size.
        opset: ONNX opset. half: FP16 weights. simplify: simplify the ONNX graph.
        passes: graph passes to apply, e.g. ``["silu", "static_grid"]`` or "silu,static_grid".
        **extra: target-specific options, passed to the target in ``ExportOptions.extra``.

    Returns:
        Path of the artefact (``.onnx`` file, OpenVINO ``.xml`` ...).

    Raises:
        InputError: unknown target or pass, bad option combination, unsupported source.
        ModelError: the source model is missing or cannot be exported.
        BackendUnavailableError: a tool the export needs is not installed (names the pip extra).

    Example:
        >>> import torch, unideploy
        >>> net = torch.nn.Conv2d(3, 8, 3)  # doctest: +SKIP
        >>> unideploy.export(net, torch.zeros(1, 3, 64, 64), out="net.onnx",
        ...                  spec={"task": "classify", "names": {0: "a"}})  # doctest: +SKIP
    """
    from unideploy.tools.convert import passes as passes_mod

    exporter = get_exporter(to)
    pass_names = passes_mod.parse_passes(passes)
    if dynamic and "static_grid" in pass_names:
        raise InputError("pass 'static_grid' fixes the input size to constants; it cannot be combined with --dynamic")
    if batch is not None and int(batch) < 1:
        raise InputError(f"--batch must be a positive integer, got {batch}")
    if opset is not None and not 7 <= int(opset) <= 30:
        raise InputError(f"--opset must be an ONNX opset number between 7 and 30, got {opset}")
    user_spec = _spec_overrides(spec)
    size = _pair(imgsz, "imgsz") if imgsz is not None else None

    is_module = not isinstance(model, (str, os.PathLike))
    if is_module:
        name = type(model).__name__.lower()
        base = Path.cwd() / name
    else:
        src = Path(model)
        suffix = src.suffix.lower()
        if suffix not in SOURCE_SUFFIXES:
            valid = ", ".join(f"{k} ({v})" for k, v in SOURCE_SUFFIXES.items())
            raise InputError(f"{src}: cannot export a '{suffix or src.name}' file; export reads {valid} or a torch.nn.Module")
        if suffix in (".yaml", ".yml"):
            base = Path.cwd() / src.stem  # a config has no folder of its own: write where we are, like Ultralytics
        else:
            if not src.is_file():
                raise ModelError(f"model file not found: {src}")
            base = src.with_suffix("")
    opts = ExportOptions(out=Path(out) if out is not None else None, base=base, imgsz=size,
                         batch=int(batch) if batch is not None else None, dynamic=bool(dynamic), opset=opset, half=bool(half),
                         simplify=bool(simplify), passes=tuple(pass_names), extra=dict(extra))

    from unideploy.tools.convert.onnx import from_onnx, from_torch, from_ultralytics

    work = Path(tempfile.mkdtemp(prefix="unideploy_export_"))
    try:
        if is_module:
            onnx_path, out_spec = from_torch(model, example_input, user_spec, opts, work)
        elif Path(model).suffix.lower() == ".onnx":
            onnx_path, out_spec = from_onnx(Path(model), user_spec, opts, work)
        else:
            onnx_path, out_spec = from_ultralytics(Path(model), user_spec, opts, work)
        if pass_names:
            applied = passes_mod.apply_onnx_passes(onnx_path, pass_names, out_spec, opts)
            out_spec.extra["passes"] = applied
        out_spec.extra["precision"] = "fp16" if opts.half else out_spec.extra.get("precision", "fp32")
        return exporter(onnx_path, out_spec, opts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["EXPORTERS", "ExportOptions", "export", "get_exporter", "list_targets", "require"]
