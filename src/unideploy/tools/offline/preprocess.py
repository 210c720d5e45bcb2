"""Stage 1 of 3: images -> one tensor file each (exactly what ``predict`` feeds the runtime) plus a manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from unideploy.core.atomic import atomic_write_json, make_dirs
from unideploy.core.checkpoint import Checkpoint, checkpoint_beside, file_key, names_digest
from unideploy.core.errors import InputError, SourceError, UnideployError
from unideploy.core.interrupts import Progress, note_progress
from unideploy.core.sources import Source
from unideploy.tools.offline.files import FORMATS, MANIFEST_NAME, MANIFEST_VERSION, check_format, save_tensor, stem_for

__all__ = ["preprocess", "read_manifest"]


def preprocess(
    model: str | os.PathLike,
    source: Any,
    out: str | os.PathLike,
    *,
    fmt: str = "npy",
    manifest: str | os.PathLike | None = None,
    vid_stride: int = 1,
    resume: bool = False,
    **predictor_kwargs: Any,
) -> Path:
    """Preprocess every image of ``source`` for ``model`` into tensor files plus a manifest.

    The tensors are exactly what :class:`~unideploy.runtime.predictor.Predictor` feeds the runtime (same adapter),
    each with a batch axis of 1. Images that cannot be decoded are listed under ``skipped`` in the manifest.

    Args:
        model: model file; its spec decides input size, layout, dtype and normalisation.
        source: image, folder, glob, video file or list of paths (see :class:`~unideploy.core.sources.Source`).
        out: folder for the tensor files (created).
        fmt: ``"npy"`` (self-describing) or ``"bin"`` (raw bytes, ais_bench style).
        manifest: manifest path (default ``out/manifest.json``).
        vid_stride: every N-th frame of a video.
        resume: continue a run that stopped early (interrupted, disk full) from the checkpoint it left beside
            the manifest (``.manifest.json.resume.json``): the images it finished are skipped, and the tensor files
            and manifest end up as an uninterrupted run's. A run that stops early writes no manifest; its tensor
            files are complete.
        **predictor_kwargs: backend, device, imgsz, family, ... as for :func:`unideploy.load`.

    Returns:
        The manifest path.

    Raises:
        SourceError: the source names nothing usable, or no image could be decoded.

    Example:
        >>> manifest = preprocess("model.onnx", "images/", "pre/", fmt="bin")  # doctest: +SKIP
    """
    from unideploy.runtime.load import load

    fmt = check_format(fmt, FORMATS, "--format")
    out = Path(out)
    src = source if isinstance(source, Source) else Source(source, vid_stride)
    items: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    used: set[str] = set()
    mpath = Path(manifest) if manifest else out / MANIFEST_NAME
    key = _resume_key(model, src, fmt, predictor_kwargs)
    ckpt = Checkpoint(checkpoint_beside(mpath), key) if key is not None else None
    if resume and ckpt is None:
        raise InputError("resume needs a source of files (not arrays)")
    state = (ckpt.load() if resume else ckpt.discard()) if ckpt is not None else None
    if state:
        src.start, items, skipped = int(state["position"]), list(state["items"]), list(state["skipped"])
        used = {it["stem"] for it in items}
    # (next source index, items, skipped) of the work done, set in one step so an interrupt sees a consistent one
    mark = (src.start, len(items), len(skipped))
    # the tensor files are the model's own float input: the infer stage opens the file as it is
    with load(model, **{"in_model_preprocess": False, **predictor_kwargs}) as pred:
        inp = pred.session.inputs[0]
        make_dirs(out)
        try:
            for item in src:
                _one(pred, item, out, fmt, used, items, skipped)
                mark = (item.index + 1, len(items), len(skipped))
        except BaseException as e:
            saved = bool(mark[0]) and ckpt is not None and ckpt.save(
                {"position": mark[0], "items": items[: mark[1]], "skipped": skipped[: mark[2]]})
            note_progress(e, Progress(mark[0], len(src) or None, "image", resumable=saved))
            raise
        doc = {
            "version": MANIFEST_VERSION,
            "model": str(pred.path),
            "input": {"name": inp.name, "shape": [d for d in inp.shape], "dtype": np.dtype(inp.dtype).name},
            "format": fmt,
            "spec": pred.spec.to_dict(),
            "items": items,
            "skipped": skipped,
        }
    if not items:
        raise SourceError(f"{source}: no image could be preprocessed ({len(skipped)} skipped)")
    atomic_write_json(mpath, doc)
    if ckpt is not None:
        ckpt.discard()
    return mpath


def _resume_key(model: Any, src: Source, fmt: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """What must match for a checkpoint to resume a preprocess run (None: a source of arrays)."""
    if src.is_video:
        source: Any = file_key(src.video) if isinstance(src.video, Path) else str(src.video)
    elif all(isinstance(e, (str, os.PathLike)) for e in src.entries):
        source = {"items": len(src.entries), "names": names_digest(str(Path(e).resolve()) for e in src.entries)}
    else:
        return None
    options = {k: v for k, v in kwargs.items() if k not in ("threads", "trust_pickle", "sha256")}
    return {"run": "preprocess", "model": file_key(model), "source": source, "vid_stride": src.vid_stride,
            "format": fmt, "options": options}


def _one(pred: Any, item: Any, out: Path, fmt: str, used: set[str], items: list[dict[str, Any]],
         skipped: list[dict[str, str]]) -> None:
    """Preprocess one source item into a tensor file and its manifest entry (or a ``skipped`` entry)."""
    try:
        img = item.load()
        x, info = pred.preprocess(img)
    except UnideployError as e:
        skipped.append({"source": str(item.path or item.name), "error": str(e)})
        return
    x = x[None]
    stem = stem_for(item.name, used)
    fname = f"{stem}.{fmt}"
    save_tensor(out / fname, x)
    items.append(
        {
            "file": fname,
            "stem": stem,
            "name": item.name,
            "source": str(item.path) if item.path is not None else item.name,
            "frame": item.frame,
            "index": item.index,
            "orig_shape": list(info.orig_shape),
            "letterbox": info.to_dict(),
            "dtype": x.dtype.name,
            "shape": list(x.shape),
        }
    )


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a manifest written by :func:`preprocess`.

    Raises:
        InputError: missing file, not JSON, or missing the ``items`` / ``spec`` entries.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{path}: expected a manifest JSON written by 'unideploy preprocess', it does not exist")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: expected a manifest JSON, could not parse it ({e})") from None
    if not isinstance(doc, dict) or "items" not in doc or "spec" not in doc:
        raise InputError(f"{path}: expected a manifest with 'items' and 'spec' (written by 'unideploy preprocess')")
    return doc
