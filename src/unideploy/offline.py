"""Three-stage offline mode: ``preprocess`` -> tensor files, ``infer`` -> output files, ``postprocess`` -> results.

The stages exchange plain files, so each can run on a different machine (an air-gapped NPU box runs only
``infer``). Folder conventions follow Huawei's ais_bench:

* ``preprocess`` writes one tensor file per image (``<stem>.npy`` or raw ``<stem>.bin``, batch axis of 1)
  and ``manifest.json``: for every tensor its source file, original size, letterbox mapping, dtype and shape,
  plus the model spec the tensors were made for.
* ``infer`` reads one folder per model input (files matched by stem across folders), runs any backend and
  writes ``<stem>_<output index>.<npy|bin|txt>`` into a date-time subfolder of ``--output`` (or
  ``--output-dirname``), plus ``outputs.json`` (names, dtypes, shapes of every output file).
* ``postprocess`` turns output files back into detections with the model family's adapter and the manifest,
  and saves them with the same sinks as ``predict`` (COCO JSON, YOLO txt, annotated images).

Raw ``.bin`` files carry no header: their dtype and shape come from the model's declared inputs, the
manifest written by ``preprocess`` beside them, or ``outputs.json`` for outputs. A file whose byte count does
not match is refused with an error naming it.

Example:
    >>> from unideploy import offline
    >>> manifest = offline.preprocess("model.onnx", "images/", "pre/")  # doctest: +SKIP
    >>> out_dir = offline.infer("model.onnx", ["pre/"], "out/", output_dirname="run1")  # doctest: +SKIP
    >>> results = offline.postprocess("model.onnx", out_dir, manifest)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import InputError, SourceError, UnideployError

MANIFEST_NAME = "manifest.json"
OUTPUTS_NAME = "outputs.json"
FORMATS = ("npy", "bin")
OUT_FORMATS = ("npy", "bin", "txt")
MANIFEST_VERSION = 1


def _check_format(fmt: str, valid: Sequence[str], flag: str) -> str:
    f = str(fmt).lower().lstrip(".")
    if f not in valid:
        raise InputError(f"{flag} must be one of {', '.join(valid)}; got {fmt!r}")
    return f


def _stem_for(name: str, used: set[str]) -> str:
    """A file stem for an item name, unique within one run (``a.jpg`` and ``a.png`` -> ``a``, ``a_png``)."""
    base = Path(name.replace("#", "_")).stem or "item"
    stem = base
    if stem in used:
        stem = f"{base}_{Path(name).suffix.lstrip('.') or 'x'}"
    k = 1
    while stem in used:
        stem = f"{base}_{k}"
        k += 1
    used.add(stem)
    return stem


def save_tensor(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write ``arr`` as ``.npy`` (with header) or ``.bin`` (raw C-order bytes) or ``.txt`` by the suffix.

    ``.txt`` holds the values as rows of the last axis (``np.savetxt`` of the array reshaped to 2-D).

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.bin"); save_tensor(p, np.zeros((1, 3), np.float32))
        >>> os.path.getsize(p)
        12
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(arr)
    suffix = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp")
    if suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, arr)
    elif suffix == ".bin":
        arr.tofile(tmp)
    elif suffix == ".txt":
        two_d = arr.reshape(-1, arr.shape[-1]) if arr.ndim >= 2 else arr.reshape(1, -1)
        np.savetxt(tmp, two_d, fmt="%.9g" if arr.dtype.kind == "f" else "%d")
    else:
        raise InputError(f"{path}: expected a .npy, .bin or .txt file name, got suffix {path.suffix!r}")
    os.replace(tmp, path)


def load_tensor(path: str | os.PathLike, dtype: Any = None, shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a tensor file written by :func:`save_tensor` (or by any ais_bench-style tool).

    ``.npy`` files carry their dtype and shape; when ``dtype``/``shape`` are given they are checked.
    ``.bin`` and ``.txt`` files need ``dtype`` and ``shape`` (a ``None`` in ``shape`` is not allowed).

    Raises:
        InputError: the file is missing, truncated, or its dtype / size / shape differ from the expected ones;
            the message names the file.

    Example:
        >>> x = load_tensor("pre/img0.bin", "float32", (1, 3, 640, 640))  # doctest: +SKIP
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"{path}: expected a tensor file, it does not exist")
    want = tuple(int(d) for d in shape) if shape is not None else None
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(
                f"{path}: expected a complete .npy file, could not read it ({str(e).splitlines()[0]})"
            ) from None
        if dtype is not None and arr.dtype != np.dtype(dtype):
            raise InputError(f"{path}: expected dtype {np.dtype(dtype).name}, the file holds {arr.dtype.name}")
        if want is not None and arr.shape != want:
            raise InputError(f"{path}: expected shape {want}, the file holds {arr.shape}")
        return arr
    if suffix not in (".bin", ".txt"):
        raise InputError(f"{path}: expected a .npy, .bin or .txt tensor file, got suffix {path.suffix!r}")
    if dtype is None or want is None or any(d is None or d < 0 for d in want):
        raise InputError(
            f"{path}: a {suffix} file has no header; its dtype and full shape must be known "
            f"(from the model's inputs or a manifest), got dtype={dtype}, shape={shape}"
        )
    dt = np.dtype(dtype)
    n = int(np.prod(want))
    if suffix == ".bin":
        size = path.stat().st_size
        if size != n * dt.itemsize:
            what = "truncated" if size < n * dt.itemsize else "too long"
            raise InputError(
                f"{path}: expected {n * dt.itemsize} bytes ({dt.name} {want}), the file has {size} "
                f"bytes ({what}; a shape or dtype mismatch, or an incomplete copy)"
            )
        return np.fromfile(path, dt).reshape(want)
    try:
        arr = np.loadtxt(path, dtype=dt, ndmin=1).reshape(-1)
    except ValueError as e:
        raise InputError(f"{path}: expected numbers, could not parse it ({str(e).splitlines()[0]})") from None
    if arr.size != n:
        raise InputError(f"{path}: expected {n} values ({dt.name} {want}), the file has {arr.size}")
    return arr.reshape(want)


# ------------------------------------------------------------------------------------------ preprocess


def preprocess(
    model: str | os.PathLike,
    source: Any,
    out: str | os.PathLike,
    *,
    fmt: str = "npy",
    manifest: str | os.PathLike | None = None,
    vid_stride: int = 1,
    **predictor_kwargs: Any,
) -> Path:
    """Preprocess every image of ``source`` for ``model`` into tensor files plus a manifest.

    The tensors are exactly what :class:`~unideploy.pipeline.Predictor` feeds the runtime (same adapter),
    each with a batch axis of 1. Images that cannot be decoded are listed under ``skipped`` in the manifest.

    Args:
        model: model file; its spec decides input size, layout, dtype and normalisation.
        source: image, folder, glob, video file or list of paths (see :class:`~unideploy.sources.Source`).
        out: folder for the tensor files (created).
        fmt: ``"npy"`` (self-describing) or ``"bin"`` (raw bytes, ais_bench style).
        manifest: manifest path (default ``out/manifest.json``).
        vid_stride: every N-th frame of a video.
        **predictor_kwargs: backend, device, imgsz, family, ... as for :func:`unideploy.load`.

    Returns:
        The manifest path.

    Raises:
        SourceError: the source names nothing usable, or no image could be decoded.

    Example:
        >>> manifest = preprocess("model.onnx", "images/", "pre/", fmt="bin")  # doctest: +SKIP
    """
    from .pipeline import load
    from .sources import Source

    fmt = _check_format(fmt, FORMATS, "--format")
    out = Path(out)
    src = source if isinstance(source, Source) else Source(source, vid_stride)
    items: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    used: set[str] = set()
    with load(model, **predictor_kwargs) as pred:
        inp = pred.session.inputs[0]
        out.mkdir(parents=True, exist_ok=True)
        for item in src:
            try:
                img = item.load()
                x, info = pred.preprocess(img)
            except UnideployError as e:
                skipped.append({"source": str(item.path or item.name), "error": str(e)})
                continue
            x = x[None]
            stem = _stem_for(item.name, used)
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
    from .sinks import atomic_write_json

    mpath = Path(manifest) if manifest else out / MANIFEST_NAME
    atomic_write_json(mpath, doc)
    return mpath


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


# ------------------------------------------------------------------------------------------------ infer


@dataclass
class InferReport:
    """What :func:`infer` did: the output folder, files written, and per-batch runtime seconds."""

    output_dir: Path
    stems: list[str] = field(default_factory=list)
    batches: int = 0
    seconds: list[float] = field(default_factory=list)

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.seconds) * 1e3) if self.seconds else 0.0


def _tensor_files(d: Path) -> dict[str, Path]:
    if not d.is_dir():
        raise InputError(f"{d}: expected a folder of .npy/.bin tensor files, it is not a folder")
    files: dict[str, Path] = {}
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix.lower() in (".npy", ".bin") and not f.name.startswith("."):
            if f.stem in files:
                raise InputError(f"{d}: two tensor files share the name {f.stem!r} ({files[f.stem].name}, {f.name})")
            files[f.stem] = f
    if not files:
        raise InputError(f"{d}: expected .npy or .bin tensor files, found none")
    return files


def _sample_shape(d: Path, info: Any, spec_imgsz: tuple[int, int] | None) -> tuple[int, ...] | None:
    """Shape of one sample (batch axis 1) for raw files of input ``info`` in folder ``d``."""
    m = d / MANIFEST_NAME
    if m.is_file():
        try:
            items = json.loads(m.read_text()).get("items") or []
            if items:
                return tuple(int(v) for v in items[0]["shape"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    shape = list(info.shape)
    if shape:
        shape[0] = 1
    if len(shape) == 4 and spec_imgsz is not None:
        for axis, v in zip(info.hw_axes(), spec_imgsz):
            if shape[axis] is None:
                shape[axis] = v
    return None if any(s is None for s in shape) else tuple(shape)


def infer(
    model: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] | str,
    output: str | os.PathLike,
    *,
    outfmt: str = "npy",
    batchsize: int | None = None,
    output_dirname: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    **backend_options: Any,
) -> InferReport:
    """Run a model on folders of tensor files, one folder per model input, writing one file per output.

    Files are matched across the input folders by name (stem). Each file holds one sample with a batch axis of
    1 (or none); ``batchsize`` samples are stacked per run (a model with a fixed batch is padded with zeros).
    Outputs are split back per sample and written as ``<stem>_<output index>.<outfmt>``.

    Args:
        model: model file for any registered backend.
        inputs: input folders in model-input order (a comma-separated string is accepted).
        output: parent folder of the results.
        outfmt: ``npy``, ``bin`` or ``txt``.
        batchsize: samples per run (default: the model's fixed batch, or 1).
        output_dirname: subfolder name (default: the current date-time, ``YYYY_MM_DD-HH_MM_SS``).
        backend, device, **backend_options: as for :func:`unideploy.load`.

    Returns:
        An :class:`InferReport` with the output folder.

    Raises:
        InputError: folder count differs from the model inputs, a file has no partner in another folder, a
            file is truncated or has the wrong shape / dtype (naming the file), or a bad ``batchsize``.

    Example:
        >>> rep = infer("model.onnx", ["pre/"], "out/", outfmt="bin", batchsize=1)  # doctest: +SKIP
        >>> rep.output_dir  # doctest: +SKIP
        PosixPath('out/2025_01_31-12_00_00')
    """
    from .backends.registry import backend_for_path, get_backend
    from .pipeline import _resolve_model_path
    from .spec import read_spec

    outfmt = _check_format(outfmt, OUT_FORMATS, "--outfmt")
    dirs = [Path(p) for p in (inputs.split(",") if isinstance(inputs, str) else inputs)]
    if batchsize is not None and int(batchsize) < 1:
        raise InputError(f"--batchsize must be a positive integer, got {batchsize}")
    path = _resolve_model_path(model)
    try:
        spec_imgsz = read_spec(path).imgsz
    except UnideployError:
        spec_imgsz = None
    tables = [_tensor_files(d) for d in dirs]  # check the folders before opening the model
    with get_backend(backend or backend_for_path(path)).open(path, device, **backend_options) as session:
        if len(dirs) != len(session.inputs):
            raise InputError(
                f"model has {len(session.inputs)} input(s) {[i.name for i in session.inputs]}; "
                f"--input gave {len(dirs)} folder(s)"
            )
        stems = sorted(tables[0])
        for d, t in zip(dirs[1:], tables[1:]):
            missing = sorted(set(stems) ^ set(t))
            if missing:
                raise InputError(
                    f"input folders {dirs[0]} and {d} must hold files of the same names; "
                    f"unmatched: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}"
                )
        fixed = session.inputs[0].shape[0] if session.inputs[0].shape else None
        bs = int(batchsize or fixed or 1)
        if fixed and bs > fixed:
            raise InputError(
                f"model input '{session.inputs[0].name}' has a fixed batch of {fixed}; --batchsize {bs} given"
            )
        raw_shapes = [_sample_shape(d, i, spec_imgsz) for d, i in zip(dirs, session.inputs)]

        def read(stem: str) -> list[np.ndarray]:
            arrs = []
            for t, info, raw in zip(tables, session.inputs, raw_shapes):
                f = t[stem]
                if f.suffix.lower() == ".bin":
                    if raw is None:
                        raise InputError(
                            f"{f}: a .bin file needs the input shape, but input '{info.name}' is "
                            f"{info.describe()} with dynamic dimensions; use .npy files or a manifest"
                        )
                    a = load_tensor(f, info.dtype, raw)
                else:
                    a = load_tensor(f, info.dtype)
                if a.ndim == len(info.shape) - 1:
                    a = a[None]
                want = (1, *info.shape[1:])
                if (
                    a.ndim != len(info.shape)
                    or a.shape[0] != 1
                    or any(w is not None and w != g for w, g in zip(want[1:], a.shape[1:]))
                ):
                    raise InputError(
                        f"{f}: input '{info.name}' expects one sample of {info.describe()} "
                        f"(batch axis 1), the file holds {a.shape}"
                    )
                arrs.append(a)
            return arrs

        if output_dirname:
            sub = Path(output_dirname)
            if sub.is_absolute() or ".." in sub.parts:
                raise InputError(f"--output-dirname must be a plain folder name, got {output_dirname!r}")
        else:
            sub = Path(datetime.now().strftime("%Y_%m_%d-%H_%M_%S"))
        out_dir = Path(output) / sub
        out_dir.mkdir(parents=True, exist_ok=True)
        report = InferReport(out_dir)
        files: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(stems), bs):
            chunk = stems[start : start + bs]
            samples = [read(s) for s in chunk]
            feeds = {}
            for k, info in enumerate(session.inputs):
                x = np.concatenate([s[k] for s in samples])
                if fixed and len(x) < fixed:
                    x = np.concatenate([x, np.zeros((fixed - len(x), *x.shape[1:]), x.dtype)])
                feeds[info.name] = x
            t0 = time.perf_counter()
            outs = session.run(feeds)
            report.seconds.append(time.perf_counter() - t0)
            report.batches += 1
            n_run = len(next(iter(feeds.values())))
            for j, stem in enumerate(chunk):
                entry = []
                for k, o in enumerate(outs):
                    o = np.asarray(o)
                    part = o[j : j + 1] if o.ndim and o.shape[0] == n_run else o
                    fname = f"{stem}_{k}.{outfmt}"
                    save_tensor(out_dir / fname, part)
                    entry.append({"file": fname, "shape": list(part.shape), "dtype": part.dtype.name})
                files[stem] = entry
                report.stems.append(stem)
        from .sinks import atomic_write_json

        atomic_write_json(
            out_dir / OUTPUTS_NAME,
            {
                "model": str(path),
                "backend": session.backend,
                "device": str(session.device),
                "inputs": [str(d) for d in dirs],
                "batchsize": bs,
                "outputs": [
                    {"name": o.name, "shape": list(o.shape), "dtype": np.dtype(o.dtype).name} for o in session.outputs
                ],
                "files": files,
                "mean_batch_ms": report.mean_ms,
            },
        )
    return report


# ------------------------------------------------------------------------------------------ postprocess


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
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
    family: str | None = None,
    backend: str | None = None,
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Yield ``(manifest item, result)`` for every item of the manifest, from the output files in ``input``.

    The adapter is built from the spec stored in the manifest (the one the tensors were made with) and the
    output layout from ``outputs.json``; only when that file is missing (outputs made by another tool) is the
    model opened to learn its outputs. No runtime is needed otherwise.

    Raises:
        InputError: an output file is missing, truncated or of the wrong shape (the message names it).
    """
    from .backends.base import TensorInfo
    from .models import resolve_adapter
    from .ops.letterbox import LetterboxInfo
    from .spec import ModelSpec, read_spec

    doc = manifest if isinstance(manifest, dict) else read_manifest(manifest)
    out_dir = Path(input)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: expected the output folder written by 'unideploy infer', it is not a folder")
    spec_d = dict(doc["spec"])
    spec_d["names"] = {int(k): v for k, v in spec_d.get("names", {}).items()}
    spec = ModelSpec.from_dict(spec_d)
    if model is not None and not spec.names:
        spec = spec.updated(names=read_spec(model).names or None)
    idx_path = out_dir / OUTPUTS_NAME
    index = json.loads(idx_path.read_text()) if idx_path.is_file() else None
    if index is not None:
        outputs = [TensorInfo(o["name"], tuple(o["shape"]), np.dtype(o["dtype"])) for o in index["outputs"]]
    else:
        if model is None:
            raise InputError(f"{out_dir}: no {OUTPUTS_NAME} here; pass the model so its outputs can be read")
        from .backends.registry import backend_for_path, get_backend
        from .pipeline import _resolve_model_path

        path = _resolve_model_path(model)
        with get_backend(backend or backend_for_path(path)).open(path) as s:
            outputs = list(s.outputs)
    adapter = resolve_adapter(spec, outputs, family)(spec, outputs)
    opts = dict(
        conf=float(conf),
        iou=float(iou),
        max_det=int(max_det),
        agnostic=bool(agnostic),
        classes=list(classes) if classes is not None else None,
    )
    for item in doc["items"]:
        outs = _output_tensors(out_dir, item["stem"], index, outputs)
        info = LetterboxInfo.from_dict(item["letterbox"])
        yield item, adapter.postprocess(outs, [info], **opts)[0]


def postprocess(
    model: str | os.PathLike | None,
    input: str | os.PathLike,
    manifest: str | os.PathLike | dict,
    *,
    save_json: str | None = None,
    save_txt: str | None = None,
    save_img: str | None = None,
    **options: Any,
) -> list[tuple[str, Any]]:
    """Results of every manifest item from ``infer`` output files; optionally saved like ``predict`` does.

    Args:
        model: the model file (used only for class names missing from the manifest, or when the output folder
            has no ``outputs.json``); may be None.
        input: the output folder of :func:`infer` (the date-time subfolder).
        manifest: path to the manifest of :func:`preprocess` (or its folder, or the loaded dict).
        save_json / save_txt / save_img: as ``predict``'s flags; images are re-read from the manifest's sources.
        **options: conf, iou, max_det, agnostic, classes, family.

    Returns:
        ``[(item name, result)]`` in manifest order.

    Example:
        >>> res = postprocess("model.onnx", "out/run1", "pre/manifest.json", save_json="dets.json")  # doctest: +SKIP
    """
    from .results import Detections
    from .sinks import Sinks
    from .sources import read_image

    sinks = Sinks(save_json, save_txt, save_img)
    results: list[tuple[str, Any]] = []
    try:
        for item, res in iter_postprocess(model, input, manifest, **options):
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
            sinks.add(item["name"], int(item.get("index", len(results))), res, image)
            results.append((item["name"], res))
    finally:
        sinks.close()
    return results
