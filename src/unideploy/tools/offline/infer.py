"""Stage 2 of 3: folders of tensor files (one per model input) -> one output file per sample and output.

Any model on any backend: it is opened with :func:`unideploy.runtime.open.open_model` without a family adapter,
so models with several inputs, or inputs that are not images, run too.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unideploy.core.atomic import atomic_write_json, make_dirs
from unideploy.core.checkpoint import CHECKPOINT_SUFFIX, Checkpoint, checkpoint_beside, file_key, names_digest
from unideploy.core.errors import InputError
from unideploy.core.interrupts import Progress, note_progress
from unideploy.tools.offline.files import (MANIFEST_NAME, OUT_FORMATS, OUTPUTS_NAME, check_format, load_tensor,
                                           save_tensor, tensor_files)

__all__ = ["InferReport", "infer"]


@dataclass
class InferReport:
    """What :func:`infer` did: the output folder, files written, and per-batch runtime seconds (the runtime's
    times are reported here, not in ``outputs.json``, so that the same inputs give the same files)."""

    output_dir: Path
    stems: list[str] = field(default_factory=list)
    batches: int = 0
    seconds: list[float] = field(default_factory=list)
    resumed: int = 0  # samples an earlier, interrupted run had done (resume=True); not in ``stems``

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.seconds) * 1e3) if self.seconds else 0.0


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
    resume: bool = False,
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
        resume: continue a run that stopped early (interrupted, disk full) from the checkpoint it left in its
            output subfolder (``.outputs.json.resume.json``; without ``output_dirname``, the newest subfolder of
            ``output`` holding one): the samples it finished are skipped and the output files and
            ``outputs.json`` end up as an uninterrupted run's. A run that stops early writes no ``outputs.json``;
            its output files are complete (whole batches).

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
    from unideploy.runtime.open import open_model, resolve_model_path

    outfmt = check_format(outfmt, OUT_FORMATS, "--outfmt")
    dirs = [Path(p) for p in (inputs.split(",") if isinstance(inputs, str) else inputs)]
    if batchsize is not None and int(batchsize) < 1:
        raise InputError(f"--batchsize must be a positive integer, got {batchsize}")
    path = resolve_model_path(model)
    tables = [tensor_files(d) for d in dirs]  # check the folders before opening the model
    with open_model(path, backend, device, backend_options=backend_options, adapter=False) as opened:
        session = opened.session
        if len(dirs) != len(session.inputs):
            raise InputError(
                f"model has {len(session.inputs)} input(s) {[i.name for i in session.inputs]}; "
                f"--input gave {len(dirs)} folder(s)"
            )
        stems = _matched_stems(dirs, tables)
        fixed = session.inputs[0].shape[0] if session.inputs[0].shape else None
        bs = int(batchsize or fixed or 1)
        if fixed and bs > fixed:
            raise InputError(
                f"model input '{session.inputs[0].name}' has a fixed batch of {fixed}; --batchsize {bs} given"
            )
        raw_shapes = [_sample_shape(d, i, opened.spec.imgsz) for d, i in zip(dirs, session.inputs)]
        out_dir = Path(output) / (_output_subdir(output_dirname) if output_dirname or not resume
                                  else _resumable_subdir(Path(output)))
        key = {"run": "infer", "model": file_key(path), "inputs": [str(d.resolve()) for d in dirs],
               "stems": names_digest(stems), "outfmt": outfmt, "batchsize": bs, "backend": session.backend,
               "device": str(session.device), "options": {k: v for k, v in backend_options.items() if k != "threads"}}
        ckpt = Checkpoint(checkpoint_beside(out_dir / OUTPUTS_NAME), key)
        state = ckpt.load() if resume else ckpt.discard()
        make_dirs(out_dir)
        report = InferReport(out_dir)
        files: dict[str, list[dict[str, Any]]] = dict(state["files"]) if state else {}
        done = len(files)  # whole batches: a resumed run batches the rest as the uninterrupted run would
        try:
            for start in range(done, len(stems), bs):
                chunk = stems[start : start + bs]
                samples = [_read_sample(s, tables, session.inputs, raw_shapes) for s in chunk]
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
                entries = {stem: _save_outputs(out_dir, stem, outs, j, n_run, outfmt) for j, stem in enumerate(chunk)}
                files.update(entries)
                report.stems.extend(chunk)
                done = start + len(chunk)
        except BaseException as e:
            kept = {s: files[s] for s in stems[:done]}
            saved = bool(done) and ckpt.save({"files": kept})
            note_progress(e, Progress(done, len(stems), "sample", resumable=saved))
            raise
        report.resumed = len(stems) - len(report.stems)
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
            },
        )
        ckpt.discard()
    return report


def _resumable_subdir(output: Path) -> Path:
    """The newest subfolder of ``output`` that holds an infer checkpoint (a new date-time folder when none does)."""
    found = sorted(output.glob(f"*/.{OUTPUTS_NAME}{CHECKPOINT_SUFFIX}"), key=lambda p: p.stat().st_mtime_ns)
    return Path(found[-1].parent.name) if found else _output_subdir(None)


def _matched_stems(dirs: list[Path], tables: list[dict[str, Path]]) -> list[str]:
    """The sorted stems of the first folder, after checking every other folder holds the same ones."""
    stems = sorted(tables[0])
    for d, t in zip(dirs[1:], tables[1:]):
        missing = sorted(set(stems) ^ set(t))
        if missing:
            raise InputError(
                f"input folders {dirs[0]} and {d} must hold files of the same names; "
                f"unmatched: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}"
            )
    return stems


def _output_subdir(output_dirname: str | None) -> Path:
    """``output_dirname`` checked to be a plain folder name, or the current date-time."""
    if output_dirname:
        sub = Path(output_dirname)
        if sub.is_absolute() or ".." in sub.parts:
            raise InputError(f"--output-dirname must be a plain folder name, got {output_dirname!r}")
        return sub
    return Path(datetime.now().strftime("%Y_%m_%d-%H_%M_%S"))


def _read_sample(stem: str, tables: list[dict[str, Path]], inputs: Sequence[Any],
                 raw_shapes: list[tuple[int, ...] | None]) -> list[np.ndarray]:
    """One sample (batch axis 1) per model input, read from the files named ``stem`` and checked against the input."""
    arrs = []
    for t, info, raw in zip(tables, inputs, raw_shapes):
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


def _save_outputs(out_dir: Path, stem: str, outs: Sequence[Any], j: int, n_run: int, outfmt: str) -> list[dict[str, Any]]:
    """Write sample ``j``'s slice of every output as ``<stem>_<k>.<outfmt>``; their outputs.json entries."""
    entry = []
    for k, o in enumerate(outs):
        o = np.asarray(o)
        part = o[j : j + 1] if o.ndim and o.shape[0] == n_run else o
        fname = f"{stem}_{k}.{outfmt}"
        save_tensor(out_dir / fname, part)
        entry.append({"file": fname, "shape": list(part.shape), "dtype": part.dtype.name})
    return entry
