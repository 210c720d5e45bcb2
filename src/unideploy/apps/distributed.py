"""Scale-out on Ray: batch prediction and evaluation over Ray Data, one predictor per actor.

Also importable as ``unideploy.ray``. Ray is an optional extra (``pip install 'unideploy[ray]'``); nothing
here imports it before a function is called, and the core never imports this module.

How it runs: the source (an image folder, a glob, a list of paths, or a Ray Dataset with a ``path``
column) becomes a Ray Dataset of ``{"path", "index"}`` rows; ``map_batches`` hands batches to a pool of
actors (``concurrency`` of them, each reserving ``num_cpus`` / ``num_gpus``), each holding one
:class:`~unideploy.runtime.predictor.Predictor` created once. Images are decoded inside the actors (by the same
:func:`~unideploy.core.sources.read_image` as ``predict``), so only paths and boxes cross the object store. Each
output row holds one image's boxes as lists, ready for :meth:`ray.data.Dataset.write_parquet`, or for
:func:`write_coco` after :func:`collect`.

Worker loss: Ray Data restarts an actor whose process died and runs its lost batch again, so a job survives it
with every image once in its output (``tests/test_faults_ray.py`` kills one mid-job). :func:`predict` and
:func:`evaluate` count how often that happened with a :class:`RunLedger` and leave the counts in :data:`last_run`.

Example:
    >>> from unideploy.apps import distributed as udr
    >>> ds = udr.predict_dataset("model.onnx", "images/", concurrency=4, num_cpus=1)  # doctest: +SKIP
    >>> ds.write_parquet("preds/")  # doctest: +SKIP
    >>> rows = udr.collect(ds); udr.write_coco(rows, "preds.json")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unideploy.apps.task_rows import decode_task, encode_task
from unideploy.core.errors import BackendUnavailableError, InputError, UnideployError

#: columns of a prediction row
COLUMNS = ("index", "path", "name", "height", "width", "xyxy", "confidence", "class_id", "error", "task")


def require_ray() -> Any:
    """Import and return ``ray`` (with Ray Data), or raise BackendUnavailableError naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(
            f"Ray is not installed ({e}); install it with: pip install 'unideploy[ray]'"
        ) from None
    return ray


def init(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None, **kwargs: Any) -> Any:
    """Connect to a Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``), or start a local one.

    Does nothing when Ray is already initialised. Returns the ``ray`` module.

    Example:
        >>> init(num_cpus=2)  # doctest: +SKIP
    """
    ray = require_ray()
    if not ray.is_initialized():
        opts: dict[str, Any] = dict(
            ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        if address:
            opts["address"] = address
        else:
            if num_cpus is not None:
                opts["num_cpus"] = int(num_cpus)
            if num_gpus is not None:
                opts["num_gpus"] = int(num_gpus)
        opts.update(kwargs)
        try:
            ray.init(**opts)
        except ConnectionError as e:
            raise InputError(f"--ray {address}: could not connect to a Ray cluster there ({e})") from None
    return ray


class PredictorActor:
    """Callable class for ``Dataset.map_batches``: one :class:`~unideploy.runtime.predictor.Predictor` per actor.

    Each call takes a pandas batch with ``path`` and ``index`` columns and returns one row per image with
    its boxes (``xyxy`` as a list of [x1, y1, x2, y2]) or the error that made it skip.

    Args:
        model: model path (must be readable on every node).
        load_kwargs: keyword arguments for :func:`unideploy.load` (backend, device, conf, threads, ...).
    """

    def __init__(self, model: str, load_kwargs: dict[str, Any] | None = None, ledger: Any = None) -> None:
        from unideploy.runtime.load import load

        self.predictor = load(model, **(load_kwargs or {}))
        self.ledger = ledger
        if ledger is not None:  # Ray Data restarts a lost actor: every start is counted
            ledger.started.remote(os.getpid())

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        indices = [int(i) for i in batch["index"]]
        if self.ledger is not None:
            self.ledger.attempt.remote(indices[0] if indices else -1, os.getpid())
        rows: list[dict[str, Any]] = []
        for out in self.predictor.stream(paths):
            det, i = out.result, out.item.index
            row: dict[str, Any] = {"index": indices[i], "path": paths[i], "name": Path(paths[i]).name}
            if out.ok:
                h, w = det.image_shape or (0, 0)
                row.update(
                    height=int(h),
                    width=int(w),
                    xyxy=det.xyxy.tolist(),
                    confidence=det.confidence.tolist(),
                    class_id=det.class_id.tolist(),
                    error=None,
                    task=encode_task(det),  # masks / keypoints / rotated boxes (apps.task_rows)
                )
            else:
                row.update(height=0, width=0, xyxy=[], confidence=[], class_id=[], error=str(out.error), task=None)
            rows.append(row)
        if self.ledger is not None:
            self.ledger.done.remote(indices[0] if indices else -1)
        return pa.Table.from_pylist(rows, schema=row_schema())


class RunLedger:
    """Counts, for one Ray job, predictor actor starts and batch attempts, so that worker loss is reported.

    Ray Data restarts an actor that died (``max_restarts=-1``) and runs its lost batch again
    (``max_task_retries=-1``); the output has each image once, and this ledger says how often that happened.
    Runs as a small Ray actor (see :func:`new_ledger`); :class:`PredictorActor` reports to it fire-and-forget.
    """

    def __init__(self) -> None:
        self.pids: list[int] = []  # one per actor start, in order
        self.attempts: dict[int, list[int]] = {}  # first index of a batch -> pids that started it
        self.finished: set[int] = set()

    def started(self, pid: int) -> None:
        self.pids.append(int(pid))

    def attempt(self, key: int, pid: int) -> None:
        self.attempts.setdefault(int(key), []).append(int(pid))

    def done(self, key: int) -> None:
        self.finished.add(int(key))

    def stats(self) -> dict[str, Any]:
        """``actor_starts``, ``batches``, ``batch_attempts``, ``retries`` (attempts beyond one per finished
        batch), ``batches_done`` and ``pids`` (of the actors started, in order)."""
        attempts = sum(len(v) for v in self.attempts.values())
        return {
            "actor_starts": len(self.pids),
            "batches": len(self.attempts),
            "batches_done": len(self.finished),
            "batch_attempts": attempts,
            "retries": attempts - len(self.attempts),
            "pids": list(self.pids),
        }


def new_ledger() -> Any:
    """A :class:`RunLedger` as a Ray actor (needs Ray initialised); pass it to :func:`predict_dataset`."""
    ray = require_ray()
    return ray.remote(num_cpus=0)(RunLedger).remote()


def ledger_stats(ledger: Any, concurrency: int) -> dict[str, Any]:
    """The ledger's counts plus ``restarts`` (actor starts beyond ``concurrency``)."""
    ray = require_ray()
    st = ray.get(ledger.stats.remote(), timeout=60)
    st["restarts"] = max(0, st["actor_starts"] - int(concurrency))
    return st


#: counts of the last :func:`predict` / :func:`evaluate` in this process (see :class:`RunLedger`)
last_run: dict[str, Any] = {}


def row_schema() -> Any:
    """Arrow schema of prediction rows (explicit, so that batches without boxes or errors keep their types)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("index", pa.int64()),
            ("path", pa.string()),
            ("name", pa.string()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("xyxy", pa.list_(pa.list_(pa.float32(), 4))),
            ("confidence", pa.list_(pa.float32())),
            ("class_id", pa.list_(pa.int64())),
            ("error", pa.string()),
            ("task", pa.string()),
        ]
    )


def _paths(source: Any) -> list[str]:
    from unideploy.core.sources import list_images

    if isinstance(source, (list, tuple)):
        if not source:
            raise InputError("expected image paths, got an empty list")
        return [str(p) for p in source]
    return [str(p.resolve()) for p in list_images(source)]


def predict_dataset(
    model: str | os.PathLike,
    source: Any,
    *,
    concurrency: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    batch_size: int = 16,
    address: str | None = None,
    ledger: Any = None,
    **predict_args: Any,
) -> Any:
    """A lazy Ray Dataset of predictions, one row per image (see :data:`COLUMNS`).

    Args:
        model: model path, readable on every node.
        source: image folder, glob, list of paths, or a Ray Dataset with a ``path`` column.
        concurrency: number of actors (one predictor each).
        num_cpus, num_gpus: resources each actor reserves (``num_gpus=1`` with ``device="cuda:0"`` per actor).
        batch_size: images per ``map_batches`` call.
        address: Ray cluster address; None starts (or reuses) a local instance.
        ledger: a :func:`new_ledger` actor that counts actor starts and batch attempts (worker loss), or None.
        **predict_args: the model and postprocess arguments of :func:`unideploy.predict` (backend, device, conf,
            iou, max_det, classes, threads, ...), for the predictor in each actor. ``threads`` defaults to
            ``num_cpus`` so that actors do not oversubscribe the cores.

    Raises:
        SourceError: the source names no image. BackendUnavailableError: Ray is not installed.
        OptionError: an argument :func:`unideploy.predict` does not take.

    Example:
        >>> ds = predict_dataset("model.onnx", "images/", concurrency=2, conf=0.3)  # doctest: +SKIP
        >>> ds.write_parquet("out/")  # doctest: +SKIP
    """
    from unideploy.tools.predict import load_kwargs

    load_args = load_kwargs(**predict_args)
    ray = init(address)
    if int(concurrency) < 1:
        raise InputError(f"concurrency must be a positive integer, got {concurrency}")
    model = str(Path(model).resolve())
    if isinstance(source, ray.data.Dataset):
        ds = source
        if "index" not in ds.schema().names:
            ds = ray.data.from_items([{"path": r["path"], "index": i} for i, r in enumerate(ds.take_all())])
    else:
        ds = ray.data.from_items([{"path": p, "index": i} for i, p in enumerate(_paths(source))])
    if num_cpus and "threads" not in load_args and not num_gpus:
        load_args["threads"] = max(1, int(num_cpus))
    return ds.map_batches(
        PredictorActor,
        fn_constructor_kwargs={"model": model, "load_kwargs": load_args, "ledger": ledger},
        batch_size=int(batch_size),
        batch_format="pandas",
        concurrency=int(concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )


def collect(ds: Any) -> list[dict[str, Any]]:
    """All rows of a prediction dataset, in source order."""
    rows = ds.take_all()
    return sorted(rows, key=lambda r: int(r["index"]))


def to_detections(rows: Sequence[dict[str, Any]], names: dict[int, str] | None = None) -> list[tuple[str, Any]]:
    """``[(name, Detections or error message)]`` from prediction rows."""
    from unideploy.core.results import Detections

    out: list[tuple[str, Any]] = []
    for r in rows:
        if r.get("error"):
            out.append((r["name"], str(r["error"])))
            continue
        xyxy = np.array([list(b) for b in r["xyxy"]], np.float32).reshape(-1, 4)
        out.append(
            (
                r["name"],
                decode_task(Detections(
                    xyxy,
                    np.asarray(list(r["confidence"]), np.float32),
                    np.asarray(list(r["class_id"]), np.int64),
                    dict(names or {}),
                    (int(r["height"]), int(r["width"])),
                ), r.get("task")),
            )
        )
    return out


def coco_from_rows(rows: Sequence[dict[str, Any]]) -> list[dict]:
    """COCO results records (image_id = 1-based position in the source, as ``predict --save-json``)."""
    from unideploy.core.sinks import coco_records

    recs: list[dict] = []
    for r, (name, det) in zip(rows, to_detections(rows)):
        if not isinstance(det, str):
            recs.extend(coco_records(det, int(r["index"]) + 1, name))
    return recs


def write_coco(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write prediction rows as a COCO results JSON (atomically)."""
    from unideploy.core.sinks import atomic_write_json

    atomic_write_json(path, coco_from_rows(rows))


def _note_run(ledger: Any, concurrency: int) -> dict[str, Any]:
    last_run.clear()
    last_run.update(ledger_stats(ledger, concurrency))
    return dict(last_run)


def predict(
    model: str | os.PathLike,
    source: Any,
    *,
    save_json: str | os.PathLike | None = None,
    save_parquet: str | os.PathLike | None = None,
    **kwargs: Any,
) -> list[tuple[str, Any]]:
    """Predict a whole source on Ray and return ``[(name, Detections or error)]`` in source order.

    Args:
        save_json: also write COCO results JSON. save_parquet: also write the rows as Parquet files in a folder.
        **kwargs: as for :func:`predict_dataset`: the Ray settings (concurrency, num_cpus, num_gpus, batch_size,
            address, ledger) and :func:`unideploy.predict`'s model and postprocess arguments.

    After the run, :data:`last_run` holds its counts (``restarts`` of lost actors, ``retries`` of their batches).

    Example:
        >>> results = predict("model.onnx", "images/", concurrency=2, save_json="preds.json")  # doctest: +SKIP
    """
    from unideploy.runtime.open import read_spec

    init(kwargs.get("address"))
    ledger = kwargs.pop("ledger", None) or new_ledger()
    ds = predict_dataset(model, source, ledger=ledger, **kwargs).materialize()
    _note_run(ledger, kwargs.get("concurrency", 1))
    if save_parquet:
        ds.write_parquet(str(save_parquet))
    rows = collect(ds)
    if save_json:
        write_coco(rows, save_json)
    try:
        names = read_spec(Path(model)).names
    except UnideployError:
        names = {}
    return to_detections(rows, names)


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    **kwargs: Any,
) -> dict[str, Any]:
    """COCO mAP of ``model`` on a labelled data set, predictions computed on Ray (see :func:`predict_dataset`).

    Gives the same numbers as :func:`unideploy.tools.evaluate.evaluate` when the predictions are the same.

    Example:
        >>> report = evaluate("model.onnx", "data.yaml", concurrency=4)  # doctest: +SKIP
        >>> report["mAP50-95"]  # doctest: +SKIP
    """
    from unideploy.tools.evaluate import load_dataset
    from unideploy.tools.evaluate.metrics import coco_map

    ds = load_dataset(Path(data), images)
    if not ds.samples:
        from unideploy.core.errors import SourceError

        raise SourceError(f"{data}: expected labelled images, found none")
    t0 = time.perf_counter()
    init(kwargs.get("address"))
    ledger = kwargs.pop("ledger", None) or new_ledger()
    rows = collect(
        predict_dataset(
            model, [str(s.path) for s in ds.samples], conf=conf, iou=iou, max_det=max_det, ledger=ledger, **kwargs
        )
    )
    seconds = time.perf_counter() - t0
    run = _note_run(ledger, kwargs.get("concurrency", 1))
    records = coco_from_rows(rows)
    skipped = [f"{r['name']}: {r['error']}" for r in rows if r.get("error")]
    gt = ds.to_coco()
    if skipped:
        bad = {int(r["index"]) + 1 for r in rows if r.get("error")}
        gt = {
            **gt,
            "images": [im for im in gt["images"] if im["id"] not in bad],
            "annotations": [a for a in gt["annotations"] if a["image_id"] not in bad],
        }
    n = len(rows) - len(skipped)
    return {
        **coco_map(gt, records, max_det=max_det),
        "images": n,
        "skipped": skipped,
        "warnings": list(ds.warnings),
        "model": str(model),
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else 0.0,
        "backend": kwargs.get("backend") or "default",
        "device": kwargs.get("device") or "cpu",
        "ray": True,
        "ray_restarts": run["restarts"],
        "ray_retries": run["retries"],
    }


__all__ = [
    "COLUMNS",
    "PredictorActor",
    "RunLedger",
    "collect",
    "coco_from_rows",
    "evaluate",
    "init",
    "last_run",
    "ledger_stats",
    "new_ledger",
    "predict",
    "predict_dataset",
    "require_ray",
    "to_detections",
    "write_coco",
]
