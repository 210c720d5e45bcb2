"""``predict``: a model over a source (images, folders, globs, videos, streams) into sinks, bad items skipped.

This is what ``unideploy predict`` runs: the command line parses its flags into these arguments, makes this one
call and prints the :class:`PredictSummary`. Each ``save_*`` argument takes a path (the sink is built here) or a
sink object (anything with ``add(outcome)`` and ``close()``, see :mod:`unideploy.core.sinks`); ``sinks`` adds more.

Example:
    >>> import unideploy
    >>> s = unideploy.predict("model.onnx", "images/", conf=0.3, save_json="preds.json")  # doctest: +SKIP
    >>> s.images, s.detections, s.failures  # doctest: +SKIP
    (12, 57, [])
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unideploy.core.errors import InputError
from unideploy.core.options import unknown_keys
from unideploy.core.sinks import CocoJsonSink, ImageSink, JsonLinesSink, Sink, Sinks, VideoSink, YoloTxtSink
from unideploy.core.sources import Source, VideoStats
from unideploy.tools.resume import SinkRun, output_anchor

__all__ = ["LOAD_ARGS", "MODEL_ARGS", "POSTPROCESS_ARGS", "PredictSummary", "batch_hint", "load_kwargs", "predict"]

#: arguments that open the model (as for :func:`unideploy.load`)
MODEL_ARGS = ("backend", "device", "imgsz", "batch", "family", "threads", "sha256", "precision", "trust_pickle",
              "fast_decode", "hint")
#: arguments that choose what postprocessing keeps (None: the model family's default)
POSTPROCESS_ARGS = ("conf", "iou", "max_det", "agnostic", "classes", "retina_masks", "multi_label")
#: every argument :func:`load_kwargs` takes: the model's, postprocessing's, and ``backend_options``
LOAD_ARGS = (*MODEL_ARGS, *POSTPROCESS_ARGS, "backend_options")

PathOrSink = str | os.PathLike | Sink | None


def batch_hint(hint: str | None, backend_options: Mapping[str, Any] | None) -> str | None:
    """The runtime hint for a batch job: ``hint``, else "throughput" unless ``backend_options`` sets one. What
    :func:`predict` and ``eval`` use when they open a model for a folder, file list or video file (images/s counts
    there, not one image's latency). Runtimes without the setting ignore it (``SHARED_OPTIONS``); outputs do not
    change.

    Example:
        >>> batch_hint(None, None), batch_hint("latency", None), batch_hint(None, {"hint": "latency"})
        ('throughput', 'latency', None)
    """
    if hint is not None or (backend_options and "hint" in backend_options):
        return hint
    return "throughput"


def load_kwargs(**args: Any) -> dict[str, Any]:
    """Keyword arguments for :func:`unideploy.load` from :func:`predict`'s model and postprocess arguments.

    Arguments left at None (and ``threads=0``, ``trust_pickle=False``, ``fast_decode=False``) are left out, so each runtime and model
    family keeps its own default; ``backend_options`` (a mapping of runtime settings) is spread in. Ray's
    :func:`unideploy.ray.predict` takes the same arguments through this function.

    Raises:
        OptionError: a name that is not one of :data:`LOAD_ARGS` (the message lists them).

    Example:
        >>> load_kwargs(backend="onnxruntime", conf=0.3, device=None, threads=0)
        {'backend': 'onnxruntime', 'conf': 0.3}
    """
    unknown_keys(args, LOAD_ARGS, "predict")
    extra = dict(args.pop("backend_options", None) or {})
    kw = {k: v for k, v in args.items() if v is not None and not (k in ("threads", "trust_pickle", "fast_decode") and not v)}
    clash = sorted(set(extra) & set(kw))
    if clash:
        raise InputError(f"backend_options repeats {', '.join(clash)}; give each setting once")
    return {**kw, **extra}


@dataclass
class PredictSummary:
    """What a :func:`predict` run did.

    Attributes:
        images: items (images or frames) with a result.
        detections: boxes over all items (0 for a classifier).
        task: the model's task (``"detect"``, ``"classify"``).
        failures: ``(name, why)`` of every item that was skipped (unreadable, undecodable).
        times: mean seconds per item of each stage: decode, preprocess, inference, postprocess.
        seconds: wall time of the run, model loading excluded.
        saved: the outputs written, as given (paths as strings; a video made from ``save_img`` included).
        video: what reading a video or stream met (None for images).
        resumed: items done by an earlier run that this one (``resume=True``) skipped; counted in ``images``,
            ``detections`` and ``failures`` too.
    """

    images: int = 0
    detections: int = 0
    task: str = "detect"
    failures: list[tuple[str, str]] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    saved: list[str] = field(default_factory=list)
    video: VideoStats | None = None
    resumed: int = 0

    @property
    def ok(self) -> bool:
        """True when no item was skipped."""
        return not self.failures


def _as_sink(value: PathOrSink, kind: type) -> Sink | None:
    if value is None or value == "":
        return None
    return value if hasattr(value, "add") and hasattr(value, "close") else kind(value)  # type: ignore[return-value]


def _label(value: Any) -> str:
    return str(getattr(value, "path", value)) if hasattr(value, "add") else str(value)


def predict(
    model: Any,
    source: Any,
    *,
    backend: str | None = None,
    device: str | None = None,
    imgsz: int | Sequence[int] | str | None = None,
    batch: int | None = None,
    family: str | None = None,
    threads: int | None = None,
    sha256: str | Sequence[str] | None = None,
    precision: str | None = None,
    trust_pickle: bool = False,
    fast_decode: bool = False,
    hint: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    agnostic: bool | None = None,
    classes: Sequence[int] | None = None,
    retina_masks: bool | None = None,
    multi_label: bool | None = None,
    vid_stride: int = 1,
    save_json: PathOrSink = None,
    save_txt: PathOrSink = None,
    save_img: PathOrSink = None,
    save_video: PathOrSink = None,
    save_jsonl: PathOrSink = None,
    sinks: Sequence[Sink] = (),
    progress: bool = False,
    resume: bool = False,
) -> PredictSummary:
    """Predict every item of ``source`` and hand each outcome to the sinks; unreadable items are skipped and
    reported in the summary, not raised.

    Args:
        model: a model file (opened here and closed at the end), or an open
            :class:`~unideploy.runtime.predictor.Predictor` (left open; the model arguments must then be unset).
        source: an image, a folder, a glob, a video file, a stream URL, or a list of paths or BGR arrays.
        backend, device, imgsz, batch, family, threads, sha256, precision, trust_pickle: as for
            :func:`unideploy.load`. backend_options: further runtime settings (``cache_dir``, ...).
        hint: "latency" or "throughput" where the runtime has the setting (OpenVINO, ONNX Runtime CPU); over files
            (not a live stream) the default is "throughput" (:func:`batch_hint`). Outputs are the same.
        fast_decode: decode large JPEGs at the scale the model needs (see :class:`~unideploy.runtime.predictor.Predictor`).
        conf, iou, max_det, agnostic, classes: what postprocessing keeps (None: the model family's default).
        retina_masks: segmentation masks at the image size (None/True) or by Ultralytics' default path (False).
        multi_label: NMS keeps a box once per class over ``conf`` (Ultralytics' ``val``); default: best class only.
        vid_stride: use every N-th video frame.
        save_json: COCO results JSON. save_txt: a folder of YOLO txt labels. save_img: a folder of annotated
            images (for a video source without ``save_video``: one annotated video ``<save_img>/<name>.mp4``).
            save_video: the annotated frames as one video (.mp4/.avi). save_jsonl: one JSON line per item.
            Each is a path or a sink object.
        sinks: further sinks.
        progress: a progress bar on stderr.
        resume: continue a run that stopped early (interrupted, disk full): the checkpoint it left beside the
            first output path (``.<name>.resume.json``, or ``.resume.json`` in a folder) says which items are done;
            they are skipped and the final files are those of an uninterrupted run. The model, source, options
            and outputs must be the same (else InputError). Without a checkpoint the run starts at the first item.
            A run that stops early leaves the COCO JSON and a video unwritten, the JSON lines covering the items
            done, and per-image files complete; the exception carries ``.progress``
            (:class:`~unideploy.core.interrupts.Progress`).

    Returns:
        The :class:`PredictSummary`: counts, the skipped items with their reasons, per-stage times, outputs.

    Raises:
        SourceError: the source names nothing usable. ModelError, BackendError, OptionError: as :func:`unideploy.load`.

    Example:
        >>> s = predict("model.onnx", "clip.mp4", vid_stride=2, save_video="annotated.mp4")  # doctest: +SKIP
        >>> print(s.video.describe())  # doctest: +SKIP
    """
    from unideploy.runtime.load import load
    from unideploy.runtime.predictor import Predictor

    src = source if isinstance(source, Source) else Source(source, vid_stride)
    post = {"conf": conf, "iou": iou, "max_det": max_det, "agnostic": agnostic, "classes": classes,
            "retina_masks": retina_masks, "multi_label": multi_label}
    opened = not isinstance(model, Predictor)
    if opened and not isinstance(src.video, str):  # files: a batch job (a live stream keeps the latency hint)
        hint = batch_hint(hint, backend_options)
    if opened:
        predictor = load(model, **load_kwargs(
            backend=backend, device=device, imgsz=imgsz, batch=batch, family=family, threads=threads, sha256=sha256,
            precision=precision, trust_pickle=trust_pickle, fast_decode=fast_decode, hint=hint,
            backend_options=backend_options, **post))
        overrides: dict[str, Any] = {}
    else:
        given = load_kwargs(backend=backend, device=device, imgsz=imgsz, batch=batch, family=family, threads=threads,
                            sha256=sha256, precision=precision, trust_pickle=trust_pickle, fast_decode=fast_decode,
                            hint=hint, backend_options=backend_options)
        if given:
            raise InputError(f"{', '.join(given)}: these open a model; predict() was given an open Predictor")
        predictor = model
        overrides = {k: v for k, v in post.items() if v is not None}
    summary = PredictSummary(task=predictor.task)
    try:
        video_out: Any = save_video
        if src.is_video and save_img and not save_video:  # a video in, an annotated video out
            video_out = str(Path(_label(save_img)) / f"{Path(str(src.video)).stem or 'stream'}.mp4")
        group = Sinks(*(s for s in (
            _as_sink(save_json, CocoJsonSink), _as_sink(save_txt, YoloTxtSink),
            _as_sink(None if src.is_video and video_out else save_img, ImageSink),
            _as_sink(video_out, VideoSink), _as_sink(save_jsonl, JsonLinesSink)) if s is not None), *sinks)
        summary.saved = [_label(v) for v in (save_json, save_txt, save_img, video_out, save_jsonl) if v]
        anchor = output_anchor((save_json, False), (save_txt, True), (None if src.is_video else save_img, True),
                               (video_out, False), (save_jsonl, False))
        key = _resume_key(predictor, src, overrides, precision, summary.saved) if anchor else None
        run = SinkRun(group, anchor, key, resume)
        _run(predictor, src, group, summary, overrides, progress, run)
    finally:
        if opened:
            predictor.close()
    summary.times = predictor.times.summary()
    summary.video = src.stats
    if src.stats is not None and src.stats.decoded:  # video frames are decoded by the reader, not per item
        summary.times["decode"] = src.stats.decode_seconds / src.stats.decoded
    return summary


def _resume_key(predictor: Any, src: Source, overrides: dict[str, Any], precision: str | None,
                saved: list[str]) -> dict[str, Any] | None:
    """What must match for a checkpoint to resume this run (None: a source of arrays cannot be resumed)."""
    import dataclasses

    from unideploy.core.checkpoint import file_key, names_digest

    if src.is_video:
        source: Any = file_key(src.video) if isinstance(src.video, Path) else str(src.video)
    elif all(isinstance(e, (str, os.PathLike)) for e in src.entries):
        source = {"items": len(src.entries), "names": names_digest(str(Path(e).resolve()) for e in src.entries)}
    else:
        return None
    return {"run": "predict", "model": file_key(predictor.path), "source": source, "vid_stride": src.vid_stride,
            "backend": predictor.backend_name, "device": str(predictor.session.device), "batch": predictor.batch,
            "imgsz": list(predictor.spec.imgsz or []), "adapter": type(predictor.adapter).__name__,
            "options": dataclasses.asdict(predictor.options), "overrides": overrides, "precision": precision,
            "fast_decode": bool(getattr(predictor, "fast_decode", False)), "outputs": saved}


def _run(predictor: Any, src: Source, group: Sinks, summary: PredictSummary, overrides: dict[str, Any],
         progress: bool, run: SinkRun) -> None:
    """Stream ``src`` through ``predictor`` into ``group``, counting into ``summary``; closes the sinks (or, when
    the run stops early, aborts them and leaves a checkpoint: see :class:`~unideploy.tools.resume.SinkRun`)."""
    from unideploy.core.progress import progress_bar

    videos = [s for s in group.sinks if isinstance(s, VideoSink) and s.fps is None]
    total = len(src) or None
    unit = "frame" if src.is_video else "image"
    start = summary.resumed = src.start = run.position
    prev = run.extra
    summary.images, summary.detections = int(prev.get("images", 0)), int(prev.get("detections", 0))
    summary.failures = [(str(n), str(w)) for n, w in prev.get("failures", [])]
    mark = (start, summary.images, summary.detections, len(summary.failures))  # set in one step: what is done
    bar = progress_bar(total if progress else None, "predict", enabled=progress)
    if start:
        bar.update(start)
    t0 = time.perf_counter()

    def counts() -> dict[str, Any]:
        return {"images": mark[1], "detections": mark[2], "failures": summary.failures[: mark[3]]}

    try:
        with contextlib.closing(predictor.stream(src, keep_images=group.wants_image, **overrides)) as stream:
            for out in stream:
                if videos and src.stats is not None:  # the frame rate is known once the source is open
                    for v in videos:
                        v.fps = src.stats.fps / src.vid_stride
                    videos = []
                group.add(out)
                if out.ok:  # counted once every sink has it: an item cut short is not done, and is redone
                    summary.images += 1
                    summary.detections += len(out.result) if summary.task != "classify" else 0
                else:
                    summary.failures.append((out.item.name, str(out.error)))
                mark = (out.item.index + 1, summary.images, summary.detections, len(summary.failures))
                bar.update(1)
    except BaseException as e:
        bar.close()
        summary.seconds = time.perf_counter() - t0
        run.stop(e, mark[0], mark[0], counts(), total, unit)
        raise
    bar.close()
    summary.seconds = time.perf_counter() - t0
    run.finish(mark[0], mark[0], counts(), total, unit)
