"""Predictor: a model file opened once (session + spec + adapter); images -> results, batched.

``Predictor.stream`` runs the threaded streaming engine of :mod:`unideploy.runtime.stream`; the process-wide
settings a predictor applies (malloc arenas, OpenCV threads) live in :mod:`unideploy.runtime.process`, and
:func:`unideploy.load` (which may return the GPU subclass) in :mod:`unideploy.runtime.load`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from unideploy.core.errors import InputError, OptionError
from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.ops.letterbox_scaled import full_size_info
from unideploy.core.options import PostprocessOptions, check_positive_int
from unideploy.core.sources import Source, read_image
from unideploy.core.spec import ModelSpec
from unideploy.runtime.backends.base import Session
from unideploy.runtime.families.base import Adapter
from unideploy.runtime.open import open_model
from unideploy.runtime.process import set_cv_threads, set_malloc_arenas
from unideploy.runtime.stream import (
    TIMES_KEPT,
    Outcome,
    StageTimes,
    StreamControl,
    close_streams,
    run_stream,
)

__all__ = ["TIMES_KEPT", "Outcome", "Predictor", "StageTimes", "set_malloc_arenas"]


class Predictor:
    """A model ready to predict.

    Args:
        model: path to a model file (.onnx, .xml, or a folder holding one .xml).
        backend: backend name (default by file type: onnxruntime for .onnx, openvino for .xml).
        device: device string for the backend ("cpu", "cuda:0", "CPU", "GPU", ...).
        conf: confidence threshold. iou: NMS IoU threshold. max_det: detections kept per image. Each None (the
            default) takes the model family's default (``Adapter.postprocess_defaults``: 0.25 / 0.7 / 300 for
            Ultralytics models; YOLOv5 and YOLOX use iou 0.45 as their reference code does).
        imgsz: input size for dynamic models (must match a static model's input).
        batch: images per inference call for dynamic-batch models.
        family: force a model family adapter instead of recognising it.
        agnostic: class-agnostic NMS. classes: keep only these class indices (of the model's classes).
        multi_label: NMS keeps a box once per class scoring over ``conf`` (Ultralytics' ``val``), not only its best.
        retina_masks: segmentation masks at the image size (True, Ultralytics' ``retina_masks=True``) or
            Ultralytics' default path (False: at the input size, then mapped onto the image; docs/tasks.md).
        workers: decode/preprocess threads for streams.
        cv_threads: OpenCV's own thread count, set process-wide (default 1: images are decoded and
            preprocessed in parallel by ``workers`` already, and OpenCV's per-call threads on top of that
            oversubscribe the cores and raised peak RSS by ~100 MB in benchmarks/vs_ultralytics.py; None
            leaves OpenCV's setting alone).
        requests: inference runs in flight for streams (default: ``Session.optimal_requests()``: OpenVINO's
            OPTIMAL_NUMBER_OF_INFER_REQUESTS, 1 under the default latency hint; ONNX Runtime CPU 2 for small
            inputs, 1 for large ones; 2 elsewhere).
        malloc_arenas: glibc malloc arenas, set process-wide before the runtime starts its threads (default 1;
            None leaves glibc's default of 8 per core). Each decode thread otherwise keeps its own arena holding
            freed full-size frames: one arena lowered the peak RSS of a YOLOv8n-640 stream by ~22 MB (~9 %) at
            the same images/s (benchmarks/vs_ultralytics.py). No effect off glibc.
        spec: extra spec overrides (dict).
        sha256: pinned SHA-256 of the model file ("HEX"), or of files beside it ("weights.bin=HEX"); a mismatch
            raises ModelError before the file is parsed (see :func:`unideploy.core.security.verify_sha256`).
        fast_decode: decode JPEG files much larger than the model input at 1/2, 1/4 or 1/8 scale (libjpeg DCT
            scaling), the smallest still at least the resized size, then letterbox; boxes map back to the full
            image. Changes pixels, so it is off by default (:mod:`unideploy.core.ops.letterbox_scaled`).
        **backend_options: passed to ``Backend.open`` (threads, hint, cache_dir, ...).

    Raises:
        OptionError: a threshold or count out of range (the message names the argument), ``classes`` outside
            the model's classes.

    Example:
        >>> import unideploy
        >>> with unideploy.load("model.onnx") as predictor:  # doctest: +SKIP
        ...     dets = predictor("bus.jpg")
        ...     print(dets.xyxy, dets.class_names)
    """

    def __init__(
        self,
        model: str | os.PathLike,
        backend: str | None = None,
        device: str | None = None,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        imgsz: int | Sequence[int] | None = None,
        batch: int | None = None,
        family: str | None = None,
        agnostic: bool = False,
        multi_label: bool = False,
        classes: Sequence[int] | None = None,
        retina_masks: bool = True,
        workers: int = 2,
        cv_threads: int | None = 1,
        requests: int | None = None,
        malloc_arenas: int | None = 1,
        spec: dict[str, Any] | None = None,
        sha256: str | Sequence[str] | dict[str, str] | None = None,
        fast_decode: bool = False,
        **backend_options: Any,
    ) -> None:
        #: the arguments this predictor was made with, for :meth:`reopen`
        self.load_args = {k: v for k, v in locals().items() if k not in ("self", "backend_options", "__class__")}
        self.load_args.update(backend_options)
        # every option is checked before the model is opened (a bad threshold fails fast)
        options = PostprocessOptions(conf=conf, iou=iou, max_det=max_det, agnostic=agnostic, classes=classes,
                                     retina_masks=retina_masks, multi_label=multi_label)
        if batch is not None:
            batch = check_positive_int(batch, "batch")
        if requests is not None:
            requests = check_positive_int(requests, "requests")
        if malloc_arenas is not None:
            set_malloc_arenas(int(malloc_arenas))
        opened = open_model(model, backend, device, family=family, imgsz=imgsz, spec=spec, sha256=sha256,
                            backend_options=backend_options)
        self.path, self.backend_name = opened.path, opened.backend_name
        self.session: Session = opened.session
        self.spec: ModelSpec = opened.spec
        self.adapter: Adapter = opened.adapter
        self.task = self.adapter.task
        try:
            #: what the caller set (None fields: the family's defaults); ``classes`` checked against the model's
            self.options: PostprocessOptions = dataclasses.replace(options, num_classes=self.spec.num_classes or None)
            fixed = self.session.inputs[0].shape[0]
            self.fixed_batch = fixed
            self.batch = fixed or int(batch or 1)
            if fixed and batch and batch != fixed:
                raise InputError(f"model input '{self.session.inputs[0].name}' has a fixed batch of {fixed}; "
                                 f"--batch {batch} given")
        except BaseException:
            self.session.close()
            raise
        self.workers = max(1, int(workers))
        self.fast_decode = bool(fast_decode)
        if cv_threads is not None:
            set_cv_threads(cv_threads)
        self.requests = requests or self.session.optimal_requests()
        self.times = StageTimes()
        self._streams: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # generator -> StreamControl

    # -- core -------------------------------------------------------------------------------------
    def prepare(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """The geometric half of preprocessing: a BGR image -> the resized (letterboxed) uint8 image and its mapping."""
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
            raise InputError(f"image array must be (H, W, 3) uint8 BGR, got {img.shape} {img.dtype}")
        if img.shape[2] == 4:
            img = img[..., :3]
        resized, info = self.adapter.resize(img)
        return resized, full_size_info(img, info)  # the full image's mapping for a fast-decoded (reduced) one

    def preprocess(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """One BGR image -> (model input without the batch axis, mapping)."""
        resized, info = self.prepare(img)
        return self.adapter.to_tensor(resized), info

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the session on a preprocessed batch, padding to a fixed batch size if needed."""
        n = len(batch)
        if self.fixed_batch and n < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - n, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        out = self.session.run({self.session.inputs[0].name: batch})
        return [o[:n] if o.ndim and o.shape[0] == len(batch) else o for o in out]

    def postprocess_options(self, **options: Any) -> PostprocessOptions:
        """The predictor's options with ``options`` (conf, iou, max_det, agnostic, classes, top_k) applied.

        Raises:
            OptionError: an unknown option (the message lists the valid ones) or a value out of range.
        """
        return self.options.updated(**options) if options else self.options

    def predict_arrays(self, images: Sequence[np.ndarray], **options: Any) -> list[Any]:
        """Results for decoded BGR uint8 images (any number; split into model batches).

        Raises:
            OptionError: an unknown or out-of-range postprocessing option.
        """
        return self._predict(images, self.postprocess_options(**options))

    def _predict(self, images: Sequence[np.ndarray], opts: PostprocessOptions) -> list[Any]:
        results: list[Any] = []
        for i in range(0, len(images), self.batch):
            chunk = [self.preprocess(im) for im in images[i : i + self.batch]]
            results.extend(self._run_chunk(chunk, opts))
        return results

    def _run_chunk(self, chunk: list[tuple[np.ndarray, LetterboxInfo]], opts: PostprocessOptions) -> list[Any]:
        x = np.stack([c[0] for c in chunk])
        t0 = time.perf_counter()
        out = self.infer(x)
        t1 = time.perf_counter()
        res = self.adapter.postprocess(out, [c[1] for c in chunk], opts)
        t2 = time.perf_counter()
        self.times.inference.append((t1 - t0) / len(chunk))
        self.times.postprocess.append((t2 - t1) / len(chunk))
        return res

    def __call__(self, images: Any, **options: Any) -> Any:
        """Predict one image (path or BGR array) -> one result; a list -> a list of results.

        Raises:
            ImageDecodeError: an image path cannot be read (use ``stream`` to skip bad files instead).
            OptionError: an unknown or out-of-range postprocessing option.
        """
        single = not isinstance(images, (list, tuple))
        seq = [images] if single else list(images)
        opts = self.postprocess_options(**options)  # checked before any image is read
        scale = self.adapter.decode_factor if self.fast_decode else None
        arrays = [im if isinstance(im, np.ndarray) else read_image(im, decode_scale=scale) for im in seq]
        res = self._predict(arrays, opts)
        return res[0] if single else res

    def stream(self, source: Any, *, keep_images: bool = False, vid_stride: int = 1, requests: int | None = None,
               **options: Any) -> Iterator[Outcome]:
        """Predict every item of a source, in order; bad items are yielded with their error, not raised.

        The stages overlap (the engine of :mod:`unideploy.runtime.stream`): a dispatcher thread reads the
        source and hands decoding + preprocessing to ``workers`` threads (bounded look-ahead), batches the
        results in input order and starts inference through the session's
        :class:`~unideploy.runtime.backends.base.AsyncRunner` (``requests`` runs in flight: OpenVINO infer
        requests, ONNX Runtime runs); a postprocess thread turns each batch's outputs into results while the
        next batches run. Every queue is bounded, and closing the generator
        (``break``, an exception, Ctrl-C) stops and joins all of its threads before it returns.

        Args:
            source: anything :class:`~unideploy.core.sources.Source` accepts, or a Source.
            keep_images: attach the decoded image to each Outcome (for drawing).
            vid_stride: use every N-th video frame.
            requests: inference runs in flight (default: the Predictor's ``requests``).
            **options: postprocessing overrides (conf, iou, max_det, agnostic, classes, top_k), validated here.

        Raises:
            OptionError: an unknown or out-of-range option (before anything runs).
            SourceError: the source names nothing usable (before the first item).
            BackendError: the runtime failed on a batch.

        Example:
            >>> with unideploy.load("model.onnx") as p:  # doctest: +SKIP
            ...     for out in p.stream("images/"):
            ...         print(out.item.name, out.result if out.ok else out.error)
        """
        opts = self.postprocess_options(**options)
        if self.fast_decode:
            source = self._fast_source(source, vid_stride, keep_images)
        ctl = StreamControl()
        gen = run_stream(self, source, keep_images, vid_stride, requests, opts, ctl)
        self._streams[gen] = ctl
        return gen

    def _fast_source(self, source: Any, vid_stride: int, keep_images: bool) -> Source:
        """``source`` as a Source whose JPEG files decode at the scale the resize needs (``fast_decode``)."""
        src = copy.copy(source) if isinstance(source, Source) else Source(source, vid_stride)
        if src.is_video:  # frames come from the video decoder at full size
            return source if isinstance(source, Source) else src
        if keep_images:
            raise OptionError("fast_decode", "decodes large JPEGs at a reduced size, so no full-size image is kept "
                              "to draw on; drop keep_images (save_img / save_video) or fast_decode")
        src.decode_scale = self.adapter.decode_factor
        return src

    def track(self, source: Any, tracker: Any = "bytetrack", *, tracker_config: Any = None, keep_images: bool = False,
              vid_stride: int = 1, **options: Any) -> Iterator[Outcome]:
        """``stream`` with multi-object tracking: each frame's Detections carry ``tracker_id``.

        Args:
            source: a video file, a stream URL, or a folder / list of frames (one sequence).
            tracker: "bytetrack", "botsort", or a tracker YAML / mapping in Ultralytics' keys.
            tracker_config: a tracker YAML (or mapping) overriding the tracker's defaults.
            keep_images, vid_stride, **options: as for :meth:`stream`.

        Example:
            >>> for out in predictor.track("clip.mp4", "botsort"):  # doctest: +SKIP
            ...     print(out.item.frame, out.result.tracker_id)
        """
        from unideploy.runtime.tracking.stream import track_stream

        return track_stream(self, source, tracker, tracker_config_file=tracker_config, keep_images=keep_images,
                            vid_stride=vid_stride, **options)

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def names(self) -> dict[int, str]:
        return self.spec.names

    def close(self) -> None:
        """Stop the streams still open on this predictor (joining their threads), then close the session.

        A stream suspended in this thread (or never started) is closed here. A stream another thread is
        iterating is told to stop; that thread's next ``next()`` (or its wait inside one) ends it with a
        BackendError saying the predictor was closed, and this call waits for it (up to 10 s).
        """
        close_streams(self._streams)
        self.session.close()

    def reopen(self) -> Predictor:
        """A new predictor on the same model path with the same arguments: the file is read again and any pinned
        digest (``sha256``) checked again. This predictor is left as it was (open, answering calls in flight).

        Use it when the file may have been replaced: on success swap in the new predictor and close the old one
        once its calls finish; on failure keep the old one.

        Raises:
            ModelError: the file now on disk is not a valid model, or does not match the pinned digest.

        Example:
            >>> try:  # doctest: +SKIP
            ...     new = predictor.reopen(); predictor.close(); predictor = new
            ... except unideploy.ModelError as e:
            ...     print(f"kept the model loaded before: {e}")
        """
        args = dict(self.load_args)
        if type(self) is not Predictor:  # a subclass (the GPU predictor) names its own backend
            args.pop("backend", None)
        return type(self)(**args)

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Predictor {self.path.name} {self.adapter.name} on {self.backend_name}:{self.session.device} "
                f"imgsz={self.spec.imgsz}>")
