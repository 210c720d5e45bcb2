"""``benchmark()``: pure inference, end to end, start-up and accuracy of one model or of every variant.

Example:
    >>> from unideploy.tools.bench import benchmark, render
    >>> report = benchmark("yolov8n.onnx", backend="all", batches=[1], loop=50, data="images/")  # doctest: +SKIP
    >>> print(render(report))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unideploy.core.errors import InputError, OptionError, UnideployError
from unideploy.core.precision import precision_label
from unideploy.runtime.backends.registry import canonical_backend, get_backend
from unideploy.tools.bench.discover import Variant, file_format, find_variants, precision_of
from unideploy.tools.bench.report import library_versions, machine_info
from unideploy.tools.bench.runners import MODES, end_to_end, input_batch, pure_inference, startup

#: raw latencies kept per run in the JSON report (for plots); beyond this they are subsampled evenly
MAX_RAW = 5000


def _labelled(data: str | Path | None) -> bool:
    return data is not None and Path(str(data)).suffix.lower() in (".yaml", ".yml", ".json")


def _data_source(data: str | Path | None, images: str | Path | None = None) -> Any:
    """A Source for the end-to-end run: the images of a labelled data set, or the folder / video itself."""
    from unideploy.core.sources import Source

    if data is None:
        return None
    if _labelled(data):
        from unideploy.tools.evaluate import load_dataset

        ds = load_dataset(data, images)
        return Source([s.path for s in ds.samples])
    return Source(data)


def _first_image(src: Any) -> Any:
    from unideploy.core.errors import ImageDecodeError

    if src is None:
        return None
    for item in src:
        try:
            return item.load()
        except ImageDecodeError:
            continue
    return None


def _mean_map(predictor: Any, data: Any, images: Any) -> dict[str, float] | None:
    try:
        from unideploy.tools.evaluate import evaluate
    except ImportError:
        return None
    res = evaluate(predictor, data, images=images)
    return {"map50_95": res.get("mAP50-95"), "map50": res.get("mAP50")}


def _variants(model: str | Path, backend: str | None) -> list[Variant]:
    from unideploy.runtime.backends.registry import backend_for_path
    from unideploy.runtime.open import resolve_model_path

    if backend == "all":
        return find_variants(model)
    path = resolve_model_path(model)
    name = canonical_backend(backend) if backend else backend_for_path(path)  # unknown names fail with the choices
    return [Variant(path, name, precision_of(path), file_format(path))]


def _options(backend: str, device: str | None, threads: int | None, extra: dict[str, Any] | None) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if threads:
        opts["threads"] = threads
    if backend == "onnxruntime" and device and device.lower().startswith(("cuda", "tensorrt", "trt")):
        opts["io_binding"] = True  # split h2d / compute / d2h
    declared = get_backend(backend).option_names()  # "*" goes to every backend: each takes the options it declares
    opts.update((k, v) for k, v in (extra or {}).get("*", {}).items() if k in declared)
    for name, values in (extra or {}).items():  # keyed by backend name or alias
        if name != "*" and canonical_backend(name) == backend:
            opts.update(values)
    return opts


def benchmark(
    model: str | Path,
    *,
    backend: str | None = None,
    device: str | None = None,
    batches: Sequence[int] = (1,),
    warmup: int = 10,
    loop: int | None = 100,
    duration: float | None = None,
    mode: str = "sync",
    requests: int | None = None,
    data: str | Path | None = None,
    images: str | Path | None = None,
    measure_startup: bool = True,
    measure_map: bool = True,
    threads: int | None = None,
    backend_options: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
    fast_decode: bool = False,
) -> dict[str, Any]:
    """Benchmark ``model`` and return a JSON-ready report (render it with :func:`unideploy.tools.bench.render`).

    Args:
        model: model file or OpenVINO folder.
        backend: a backend name, "all" (every installed backend x every variant beside the model), or
            None (by file type).
        device: device for every backend (default: each backend's own).
        batches: batch sizes (a fixed-batch model only runs its own; others are reported as skipped).
        warmup, loop, duration: untimed runs, then ``loop`` timed runs or ``duration`` seconds.
        mode, requests: "sync", or "async" with ``requests`` runs in flight (default: the runtime's choice).
        data: images for the end-to-end run: folder, glob, video, or a labelled data set (data.yaml / COCO
            json, which also gives mAP when ``unideploy.tools.evaluate`` is available).
        images: image folder of a COCO json.
        measure_startup: run the start-up measurement (two fresh subprocesses per variant).
        measure_map: compute mAP when ``data`` is labelled.
        threads: runtime threads.
        backend_options: extra ``Backend.open`` options per backend name ("*": for every backend), e.g.
            {"onnxruntime": {"spin": False}, "openvino": {"hint": "throughput"}}.
        log: called with a line of progress (e.g. ``print``).
        fast_decode: decode large JPEGs of ``data`` at the scale the model needs (``unideploy.load``'s option).

    Raises:
        InputError: bad batch sizes, mode or loop (for one model: a batch its fixed batch rules out);
        ModelError / SourceError for bad paths. With ``backend="all"`` a variant that fails is reported in its
        run's ``error`` instead, and the others go on.

    Example:
        >>> report = benchmark("model.onnx", batches=[1], loop=20, measure_startup=False)  # doctest: +SKIP
        >>> report["runs"][0]["batches"][0]["pure"]["throughput"]  # doctest: +SKIP
    """
    from unideploy.runtime.predictor import Predictor

    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    batches = [int(b) for b in batches]
    if not batches or any(b < 1 for b in batches):
        raise InputError(f"--batch expects positive integers like 1,8, got {list(batches)}")
    say = log or (lambda _msg: None)
    machine = machine_info()
    variants = _variants(model, backend)
    many = backend == "all"
    source = _data_source(data, images)
    first_image = _first_image(source)
    report: dict[str, Any] = {
        "model": str(model), "machine": machine, "versions": library_versions(),
        "settings": {"backend": backend, "device": device, "batches": batches, "warmup": warmup,
                     "loop": None if duration else loop, "duration_s": duration, "mode": mode, "requests": requests,
                     "data": None if data is None else str(data), "threads": threads,
                     "fast_decode": fast_decode},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": [], "notes": [],
    }
    if machine.get("load_average") and machine.get("logical_cores") and machine["load_average"][0] > 0.5 * machine["logical_cores"]:
        report["notes"].append(f"the machine was busy (load average {machine['load_average'][0]} on "
                               f"{machine['logical_cores']} cores): expect noisy numbers")
    for v in variants:
        run: dict[str, Any] = {"model": str(v.path), "file": v.path.name, "backend": v.backend, "device": device,
                               "precision": v.precision, "format": v.format, "size_mb": v.size_mb, "batches": [],
                               "startup": None, "map50_95": None, "map50": None, "error": None}
        report["runs"].append(run)
        opts = _options(v.backend, device, threads, backend_options)
        if fast_decode:
            opts["fast_decode"] = True
        say(f"{v.label}: loading")
        try:
            with Predictor(v.path, v.backend, device, **opts) as pred:
                run["device"] = str(pred.session.device)
                run["precision"] = precision_label(v.precision, pred.session.compute_precision())
                run["preprocess_in"] = pred.spec.in_model or "host"  # openvino / aipp / rknn: inside the model
                if not many and pred.fixed_batch and pred.fixed_batch not in batches:
                    raise OptionError("batch", f"must be {pred.fixed_batch} for this model (its batch is fixed), "
                                               f"got {','.join(map(str, batches))}")
                for b in batches:
                    run["batches"].append(_one_batch(pred, b, source, first_image, warmup, loop, duration, mode,
                                                     requests, say, v.label))
                if measure_map and _labelled(data):
                    say(f"{v.label}: mAP on {data}")
                    run.update(_mean_map(pred, data, images) or {})
        except UnideployError as e:
            if not many:  # one model asked for: its error is the command's error, said once
                raise
            run["error"] = str(e)  # one of many: reported in the table's "not measured" list
            continue
        if measure_startup:
            say(f"{v.label}: start-up (2 fresh processes)")
            try:
                run["startup"] = startup(v.path, v.backend, device, opts)
            except UnideployError as e:
                run["startup_error"] = str(e)
    if not any(r["batches"] for r in report["runs"]) and all(r["error"] for r in report["runs"]):
        report["notes"].append("no variant could be measured")
    return report


def _one_batch(pred: Any, b: int, source: Any, image: Any, warmup: int, loop: int | None, duration: float | None,
               mode: str, requests: int | None, say: Callable[[str], None], label: str) -> dict[str, Any]:
    if pred.fixed_batch and b != pred.fixed_batch:
        return {"batch": b, "skipped": f"the model has a fixed batch of {pred.fixed_batch}"}
    try:
        x = input_batch(pred, b, image)
    except InputError as e:
        return {"batch": b, "skipped": str(e)}
    say(f"{label}: pure inference, batch {b}, {mode}")
    pure = pure_inference(pred.session, x, warmup=warmup, loop=loop, duration=duration, mode=mode, requests=requests)
    entry: dict[str, Any] = {"batch": b, "pure": pure.to_dict()}
    raw = [t * 1e3 for t in pure.latencies]
    if len(raw) > MAX_RAW:
        step = len(raw) / MAX_RAW
        raw = [raw[int(i * step)] for i in range(MAX_RAW)]
    entry["pure"]["latencies_ms"] = raw
    if source is not None:
        say(f"{label}: end to end, batch {b}")
        saved = pred.batch
        pred.batch = b  # dynamic-batch model: stream in batches of b
        try:
            e2e = end_to_end(pred, source, requests=pure.requests if mode == "async" else 1)
        finally:
            pred.batch = saved
        entry["e2e"] = e2e.to_dict()
        entry["ratio"] = e2e.images_per_s / pure.throughput if pure.throughput else None
    return entry
