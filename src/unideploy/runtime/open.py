"""open_model(): the ONE way a model file becomes (session, spec, adapter).

Every tool that runs a model (the Predictor, offline ``infer``, ``compare``, ``quantize``, ``bench``, the TensorRT and
RKNN calibrators) calls this, so the spec is resolved in one place and in one order:

1. the path is resolved (an OpenVINO export folder -> its one ``.xml``) and pinned digests are checked;
2. the backend is chosen (``backend`` or the default for the file type) and opens the file. A backend that
   parses the file anyway reads its metadata in the same pass (ONNX: one read gives ``metadata_props`` and the
   external-data references, checked before the runtime loads the file; OpenVINO ``rt_info`` /
   ``metadata.yaml``; torch checkpoint metadata) and keeps it in ``Session.file_metadata``; for the others the
   metadata comes from :meth:`Backend.read_metadata`;
3. the spec is built from that metadata, the sidecar JSON and the caller's ``spec`` overrides
   (:func:`unideploy.core.spec.build_spec`);
4. the session's input completes the spec: layout, dtype, batch and (when static) the image size;
5. the family adapter is chosen and fills in its own preprocessing defaults, except for fields the caller set;
6. the session may take over the preprocessing after the resize (``Session.fuse_preprocess``: OpenVINO's
   PrePostProcessor, before its one compile); the adapter is then rebuilt on the spec it returns (``in_model``).

Example:
    >>> from unideploy.runtime.open import open_model
    >>> with open_model("model.onnx", imgsz=640) as m:  # doctest: +SKIP
    ...     print(m.spec.imgsz, m.adapter.name, m.backend_name)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from unideploy.core.errors import InputError, ModelError
from unideploy.core.security import verify_sha256
from unideploy.core.spec import ModelSpec, build_spec
from unideploy.runtime.backends.base import Session
from unideploy.runtime.backends.registry import backend_for_path, canonical_backend, get_backend
from unideploy.runtime.families import resolve_adapter
from unideploy.runtime.families.base import Adapter

__all__ = ["OpenModel", "open_model", "read_spec", "resolve_model_path", "finish_spec"]


def resolve_model_path(model: str | os.PathLike) -> Path:
    """The model file for ``model``: the path itself, or the one ``.xml`` in an OpenVINO export folder."""
    p = Path(model)
    if p.is_dir():  # an OpenVINO export folder (Ultralytics' *_openvino_model/)
        xmls = sorted(p.glob("*.xml"))
        if len(xmls) == 1:
            return xmls[0]
        raise ModelError(f"{p}: expected a model file or a folder with one OpenVINO .xml, found {len(xmls)} .xml files")
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    return p


def read_spec(model: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
              backend: str | None = None) -> ModelSpec:
    """The spec a model file carries (its metadata, read by its backend, then the sidecar JSON), with ``overrides``
    applied; nothing is loaded and no runtime is imported.

    Args:
        model: a model file (.onnx, .xml, .pt, .om, .rknn, .engine, ...).
        overrides: spec fields that win over the file's (None values are ignored).
        backend: the backend whose reader to use (default: by file type).

    Raises:
        ModelError: the file cannot be read as its type. SpecError: an embedded or sidecar spec is malformed.

    Example:
        >>> import unideploy
        >>> spec = unideploy.read_spec("model.onnx", {"imgsz": 640})  # doctest: +SKIP
    """
    path = Path(model)
    name = canonical_backend(backend) if backend else backend_for_path(path)
    return build_spec(path, get_backend(name).read_metadata(path), overrides)


def finish_spec(spec: ModelSpec, session: Session, imgsz: Any = None) -> ModelSpec:
    """``spec`` completed from the session's first input: layout, dtype, batch and (static or asked) image size."""
    inp = session.inputs[0]
    if len(inp.shape) != 4:
        raise ModelError(f"input '{inp.name}' has shape {inp.describe()}; expected a 4-D image batch (N,C,H,W) or (N,H,W,C)")
    nhwc = inp.hw_axes() == (1, 2)
    hw = inp.image_hw()
    static = hw if None not in hw else None
    want = ModelSpec(imgsz=imgsz).imgsz if imgsz is not None else None
    if static and want and want != static:
        raise InputError(
            f"model input '{inp.name}' is fixed at {inp.describe()}; --imgsz {want[0]}x{want[1]} given "
            f"(use --imgsz {static[0]},{static[1]} or omit it)"
        )
    size = static or want or spec.imgsz or (640, 640)
    return spec.updated(imgsz=size, layout="nhwc" if nhwc else "nchw", input_dtype=np.dtype(inp.dtype).name,
                        batch=inp.shape[0])


@dataclass
class OpenModel:
    """An opened model: the session, its final spec, and the family adapter built for it.

    Closing it closes the session. It is a context manager.
    """

    path: Path
    backend_name: str
    session: Session
    spec: ModelSpec
    adapter: Adapter | None  # None when opened with adapter=False

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> OpenModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_model(
    model: str | os.PathLike,
    backend: str | None = None,
    device: str | None = None,
    *,
    family: str | None = None,
    imgsz: int | Sequence[int] | None = None,
    spec: Mapping[str, Any] | None = None,
    sha256: str | Sequence[str] | dict[str, str] | None = None,
    backend_options: Mapping[str, Any] | None = None,
    adapter: bool = True,
) -> OpenModel:
    """Open ``model`` on ``backend``/``device`` and resolve its spec and family adapter, reading the file once.

    Args:
        model: a model file (.onnx, .xml, .pt, .om, .rknn, .engine, ...) or an OpenVINO export folder.
        backend: registered backend name or alias (default: by file type).
        device: device string for the backend.
        family: force a model family instead of recognising it.
        imgsz: input size for dynamic models (must match a static model's input).
        spec: spec fields set by the caller; they win over the file's metadata and the family's defaults.
        sha256: pinned digests checked before anything parses the file.
        backend_options: the backend's declared options (unknown keys are an error listing the valid ones).
        adapter: False opens any model (several inputs, no image): the spec stays as the file and ``spec`` give it
            (steps 4 and 5 are skipped) and ``OpenModel.adapter`` is None; offline ``infer`` runs models this way.

    Raises:
        ModelError: missing or unreadable file, unknown layout. InputError: bad backend name or options.
    """
    path = resolve_model_path(model)
    if sha256:  # pinned digests are checked before anything parses the file
        verify_sha256(path, sha256)
    name = canonical_backend(backend) if backend else backend_for_path(path)
    backend_cls = get_backend(name)
    overrides = {**(spec or {}), "family": family} if family else dict(spec or {})
    session = backend_cls.open(path, device, **dict(backend_options or {}))
    try:  # the metadata the backend read while opening; a backend that did not read it reads it now
        meta = session.file_metadata
        base_spec = build_spec(path, backend_cls.read_metadata(path) if meta is None else meta, overrides)
    except BaseException:
        session.close()
        raise
    if not adapter:
        return OpenModel(path, name, session, base_spec, None)
    try:
        final = finish_spec(base_spec, session, imgsz)
        adapter = resolve_adapter(final, session.outputs, family)(final, session.outputs, keep=tuple(spec or ()))
        fused = session.fuse_preprocess(adapter.spec)  # OpenVINO: PrePostProcessor steps before the compile
        if fused is not None:
            adapter = type(adapter)(fused, session.outputs, keep=tuple(fused.to_dict()))
    except BaseException:
        session.close()
        raise
    return OpenModel(path, name, session, adapter.spec, adapter)
