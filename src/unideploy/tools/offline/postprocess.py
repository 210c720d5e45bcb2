"""Stage 3 of 3: output files + manifest -> results, saved with the same sinks as ``predict``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from unideploy.core.checkpoint import file_key, names_digest
from unideploy.core.errors import InputError, UnideployError
from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Detections
from unideploy.core.sinks import Sinks
from unideploy.core.sources import Item, Outcome, read_image
from unideploy.core.spec import ModelSpec
from unideploy.tools.offline.files import OUT_FORMATS, OUTPUTS_NAME, load_tensor
from unideploy.tools.offline.preprocess import read_manifest
from unideploy.tools.resume import SinkRun, output_anchor

__all__ = ["iter_postprocess", "postprocess"]


def _output_tensors(out_dir: Path, stem: str, index: dict[str, Any] | None, outputs: list[Any]) -> list[np.ndarray]:
    if index is not None and stem in index.get("files", {}):
        return [load_tensor(out_dir / e["file"], e["dtype"], e["shape"]) for e in index["files"][stem]]
    arrs = []
    for k, info in enumerate(outputs):
        f = next((out_dir / f"{stem}_{k}.{s}" for s in OUT_FORMATS if (out_dir / f"{stem}_{k}.{s}").is_file()), None)
        if f is None:
            raise InputError(
                f"{out_dir}: expected output file {stem}_{k}.npy|bin|txt for input {stem!r}, it is missing"
            )
        shape = (1, *info.shape[1:]) if info.shape else ()
        arrs.append(load_tensor(f, info.dtype, shape if f.suffix != ".npy" else None))
    return arrs


def iter_postprocess(
    model: str | os.PathLike | None,
    input: str | os.PathLike,
    manifest: str | os.PathLike | dict,
    *,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
    family: str | None = None,
    backend: str | None = None,
    start: int = 0,
    retina_masks: bool = True,
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Yield ``(manifest item, result)`` for every item of the manifest, from the output files in ``input``.

    The adapter is built from the spec stored in the manifest (the one the tensors were made with) and the
    output layout from ``outputs.json``; only when that file is missing (outputs made by another tool) is the
    model opened to learn its outputs. No runtime is needed otherwise. ``conf``, ``iou`` and ``max_det`` left None
    take the model family's defaults, as in ``predict``. ``start`` skips that many manifest items.

    Raises:
        InputError: an output file is missing, truncated or of the wrong shape (the message names it).
        OptionError: ``conf`` / ``iou`` outside 0..1, or another bad postprocess option.
    """
    from unideploy.runtime.backends.base import TensorInfo
    from unideploy.runtime.families import resolve_adapter
    from unideploy.runtime.open import open_model, read_spec, resolve_model_path

    opts = PostprocessOptions(conf=conf, iou=iou, max_det=max_det, agnostic=agnostic,
                              classes=tuple(classes) if classes is not None else None, retina_masks=retina_masks)
    doc = manifest if isinstance(manifest, dict) else read_manifest(manifest)
    out_dir = Path(input)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: expected the output folder written by 'unideploy infer', it is not a folder")
    spec_d = dict(doc["spec"])
    spec_d["names"] = {int(k): v for k, v in spec_d.get("names", {}).items()}
    spec = ModelSpec.from_dict(spec_d)
    if model is not None and not spec.names:
        spec = spec.updated(names=read_spec(resolve_model_path(model)).names or None)
    idx_path = out_dir / OUTPUTS_NAME
    index = json.loads(idx_path.read_text()) if idx_path.is_file() else None
    if index is not None:
        outputs = [TensorInfo(o["name"], tuple(o["shape"]), np.dtype(o["dtype"])) for o in index["outputs"]]
    else:
        if model is None:
            raise InputError(f"{out_dir}: no {OUTPUTS_NAME} here; pass the model so its outputs can be read")
        with open_model(model, backend, adapter=False) as opened:
            outputs = list(opened.session.outputs)
    adapter = resolve_adapter(spec, outputs, family)(spec, outputs)
    for item in doc["items"][start:]:
        outs = _output_tensors(out_dir, item["stem"], index, outputs)
        info = LetterboxInfo.from_dict(item["letterbox"])
        yield item, adapter.postprocess(outs, [info], opts)[0]


def postprocess(
    model: str | os.PathLike | None,
    input: str | os.PathLike,
    manifest: str | os.PathLike | dict,
    *,
    save_json: str | None = None,
    save_txt: str | None = None,
    save_img: str | None = None,
    resume: bool = False,
    **options: Any,
) -> list[tuple[str, Any]]:
    """Results of every manifest item from ``infer`` output files; optionally saved like ``predict`` does.

    Args:
        model: the model file (used only for class names missing from the manifest, or when the output folder
            has no ``outputs.json``); may be None.
        input: the output folder of :func:`infer` (the date-time subfolder).
        manifest: path to the manifest of :func:`preprocess` (or its folder, or the loaded dict).
        save_json / save_txt / save_img: as ``predict``'s flags; images are re-read from the manifest's sources.
        resume: continue a run that stopped early from the checkpoint beside its first output, as ``predict``
            does: the items it saved are skipped (and not returned), and the files end up as an uninterrupted
            run's. A run that stops early leaves the COCO JSON unwritten and per-image files complete.
        **options: conf, iou, max_det, agnostic, classes, family, retina_masks.

    Returns:
        ``[(item name, result)]`` in manifest order (with ``resume``, of the items this run did).

    Example:
        >>> res = postprocess("model.onnx", "out/run1", "pre/manifest.json", save_json="dets.json")  # doctest: +SKIP
    """
    doc = manifest if isinstance(manifest, dict) else read_manifest(manifest)
    items = doc["items"]
    sinks = Sinks.from_paths(save_json, save_txt, save_img)
    key = {"run": "postprocess", "input": str(Path(input).resolve()),
           "items": names_digest(json.dumps(it, sort_keys=True) for it in items),
           "model": file_key(model) if model is not None else None,
           "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(options.items())},
           "outputs": [str(p) for p in (save_json, save_txt, save_img) if p]}
    run = SinkRun(sinks, output_anchor((save_json, False), (save_txt, True), (save_img, True)), key, resume)
    results: list[tuple[str, Any]] = []
    pos = mark = run.position

    def upto(p: int) -> int:  # the source index of manifest item p (what the sinks' checkpoints count by)
        return int(items[p].get("index", p)) if p < len(items) else 1 << 62

    try:
        for item, res in iter_postprocess(model, input, doc, start=pos, **options):
            if not isinstance(res, Detections) and (save_json or save_txt or save_img):
                raise InputError(
                    f"--save-json/--save-txt/--save-img write detections; this model gives "
                    f"{type(res).__name__} (use the Python API's results)"
                )
            image = None
            if sinks.wants_image and item.get("frame") is None:
                try:
                    image = read_image(item["source"])
                except UnideployError:
                    image = None  # the source is not on this machine: skip drawing, keep the other outputs
            entry = Item(item["name"], int(item.get("index", pos + len(results))), lambda img=image: img)
            sinks.add(Outcome(entry, res, image=image))
            results.append((item["name"], res))
            mark = pos + len(results)
    except BaseException as e:
        run.stop(e, mark, upto(mark), {}, len(items), "image")
        raise
    run.finish(mark, upto(mark), {}, len(items), "image")
    return results
