"""Predictor: model file -> session + spec + adapter; images -> results, batched and pipelined.

``Predictor.stream`` pipelines the stages: decoding and preprocessing run in worker threads (OpenCV releases
the GIL) with a bounded look-ahead, inference goes through the session's ``AsyncRunner`` with several runs in
flight, and postprocessing has its own thread; results come back in input order, and closing the stream (or
the predictor) joins every thread it started.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .backends.base import Session
from .backends.registry import backend_for_path, get_backend
from .errors import BackendError, InputError, ModelError, UnideployError
from .models import resolve_adapter
from .models.base import Adapter
from .ops.letterbox import LetterboxInfo
from .security import verify_sha256
from .sources import Item, Source, read_image
from .spec import ModelSpec, read_spec

MODEL_SUFFIXES = (".onnx", ".xml")
#: seconds between checks of a stream's stop flag while a thread waits
_POLL = 0.05
#: per-stage timing samples a Predictor keeps (the most recent; older ones are dropped)
TIMES_KEPT = 10_000


#: seconds Predictor.close() waits for a stream that another thread is iterating
_CLOSE_WAIT = 10.0


class _Stopped(Exception):
    """Internal: a stream was closed while a stage was waiting."""


@dataclass
class _StreamControl:
    """Shared between a stream's generator and Predictor.close(): who iterates it, stop and done flags."""

    stop: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    owner: int | None = None
    closed: bool = False


def _wait(fut: Future, stop: threading.Event) -> Any:
    """``fut.result()``, waking up regularly so that a closed stream (or Ctrl-C) is noticed."""
    while True:
        try:
            return fut.result(timeout=_POLL)
        except FutureTimeout:
            if stop.is_set():
                raise _Stopped() from None


@dataclass
class StageTimes:
    """Wall seconds per stage and item (decode and preprocess run in worker threads), the most recent
    ``TIMES_KEPT`` of each: a predictor reading a stream for days must not keep every sample (an unbounded
    list grew RSS by ~1.6 MB per 10,000 predictions in benchmarks/soak.py)."""

    decode: deque[float] = field(default_factory=lambda: deque(maxlen=TIMES_KEPT))
    preprocess: deque[float] = field(default_factory=lambda: deque(maxlen=TIMES_KEPT))
    inference: deque[float] = field(default_factory=lambda: deque(maxlen=TIMES_KEPT))
    postprocess: deque[float] = field(default_factory=lambda: deque(maxlen=TIMES_KEPT))

    def summary(self) -> dict[str, float]:
        return {k: float(np.mean(v)) if v else 0.0 for k, v in self.__dict__.items()}


@dataclass
class Outcome:
    """What happened to one item of a stream: its result, or the error that made it skip."""

    item: Item
    result: Any = None
    error: UnideployError | None = None
    image: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _resolve_model_path(model: str | os.PathLike) -> Path:
    p = Path(model)
    if p.is_dir():  # an OpenVINO export folder (Ultralytics' *_openvino_model/)
        xmls = sorted(p.glob("*.xml"))
        if len(xmls) == 1:
            return xmls[0]
        raise ModelError(f"{p}: expected a model file or a folder with one OpenVINO .xml, found {len(xmls)} .xml files")
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    return p


def set_malloc_arenas(n: int) -> bool:
    """Limit glibc's malloc arenas (``mallopt(M_ARENA_MAX, n)``) for threads that have not allocated yet.
    Returns False where there is no glibc (musl, macOS, Windows) and nothing was changed."""
    if n < 1:
        raise InputError(f"malloc_arenas must be a positive integer, got {n}")
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        return bool(libc.mallopt(ctypes.c_int(-8), ctypes.c_int(n)))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


class Predictor:
    """A model ready to predict.

    Args:
        model: path to a model file (.onnx, .xml, or a folder holding one .xml).
        backend: backend name (default by file type: onnxruntime for .onnx, openvino for .xml).
        device: device string for the backend ("cpu", "cuda:0", "CPU", "GPU", ...).
        conf: confidence threshold. iou: NMS IoU threshold. max_det: detections kept per image.
        imgsz: input size for dynamic models (must match a static model's input).
        batch: images per inference call for dynamic-batch models.
        family: force a model family adapter instead of recognising it.
        agnostic: class-agnostic NMS. classes: keep only these class indices.
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
            raises ModelError before the file is parsed (see :func:`unideploy.security.verify_sha256`).
        **backend_options: passed to ``Backend.open`` (threads, hint, cache_dir, ...).

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
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        imgsz: int | Sequence[int] | None = None,
        batch: int | None = None,
        family: str | None = None,
        agnostic: bool = False,
        classes: Sequence[int] | None = None,
        workers: int = 2,
        cv_threads: int | None = 1,
        requests: int | None = None,
        malloc_arenas: int | None = 1,
        spec: dict[str, Any] | None = None,
        sha256: str | Sequence[str] | dict[str, str] | None = None,
        **backend_options: Any,
    ) -> None:
        for name, v in (("conf", conf), ("iou", iou)):
            if not 0.0 <= float(v) <= 1.0:
                raise InputError(f"--{name} must be between 0 and 1, got {v}")
        if batch is not None and int(batch) < 1:
            raise InputError(f"--batch must be a positive integer, got {batch}")
        self.path = _resolve_model_path(model)
        if sha256:  # pinned digests are checked before anything parses the file
            verify_sha256(self.path, sha256)
        self.backend_name = backend or backend_for_path(self.path)
        backend_cls = get_backend(self.backend_name)
        if malloc_arenas is not None:
            set_malloc_arenas(int(malloc_arenas))
        base_spec = read_spec(self.path, {**(spec or {}), "family": family} if family else spec)
        self.session: Session = backend_cls.open(self.path, device, **backend_options)
        try:
            self.spec = self._finish_spec(base_spec, imgsz)
            self.adapter: Adapter = resolve_adapter(self.spec, self.session.outputs, family)(
                self.spec, self.session.outputs, keep=tuple(spec or ()))
            self.spec = self.adapter.spec  # with the family's preprocessing defaults filled in
        except BaseException:
            self.session.close()
            raise
        self.task = self.adapter.task
        fixed = self.session.inputs[0].shape[0]
        self.fixed_batch = fixed
        self.batch = fixed or int(batch or 1)
        if fixed and batch and int(batch) != fixed:
            raise InputError(f"model input '{self.session.inputs[0].name}' has a fixed batch of {fixed}; --batch {batch} given")
        self.options = dict(conf=float(conf), iou=float(iou), max_det=int(max_det), agnostic=bool(agnostic),
                            classes=list(classes) if classes is not None else None)
        self.workers = max(1, int(workers))
        if cv_threads is not None:
            import cv2

            cv2.setNumThreads(int(cv_threads))
        if requests is not None and int(requests) < 1:
            raise InputError(f"requests must be a positive integer, got {requests}")
        self.requests = int(requests) if requests else self.session.optimal_requests()
        self.times = StageTimes()
        self._streams: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # generator -> _StreamControl

    # -- construction helpers -------------------------------------------------------------------
    def _finish_spec(self, spec: ModelSpec, imgsz: Any) -> ModelSpec:
        inp = self.session.inputs[0]
        if len(inp.shape) != 4:
            raise ModelError(f"input '{inp.name}' has shape {inp.describe()}; expected a 4-D image batch (N,C,H,W) or (N,H,W,C)")
        nhwc = inp.hw_axes() == (1, 2)
        hw = inp.image_hw()
        static = hw if None not in hw else None
        want = None
        if imgsz is not None:
            want = ModelSpec(imgsz=imgsz).imgsz
        if static and want and want != static:
            raise InputError(
                f"model input '{inp.name}' is fixed at {inp.describe()}; --imgsz {want[0]}x{want[1]} given "
                f"(use --imgsz {static[0]},{static[1]} or omit it)"
            )
        size = static or want or spec.imgsz or (640, 640)
        return spec.updated(imgsz=size, layout="nhwc" if nhwc else "nchw", input_dtype=np.dtype(inp.dtype).name,
                            batch=inp.shape[0])

    # -- core -------------------------------------------------------------------------------------
    def prepare(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """The geometric half of preprocessing: a BGR image -> the resized (letterboxed) uint8 image and its mapping."""
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
            raise InputError(f"image array must be (H, W, 3) uint8 BGR, got {img.shape} {img.dtype}")
        if img.shape[2] == 4:
            img = img[..., :3]
        return self.adapter.resize(img)

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

    def predict_arrays(self, images: Sequence[np.ndarray], **options: Any) -> list[Any]:
        """Results for decoded BGR uint8 images (any number; split into model batches)."""
        opts = {**self.options, **options}
        results: list[Any] = []
        for i in range(0, len(images), self.batch):
            chunk = [self.preprocess(im) for im in images[i : i + self.batch]]
            results.extend(self._run_chunk(chunk, opts))
        return results

    def _run_chunk(self, chunk: list[tuple[np.ndarray, LetterboxInfo]], opts: dict[str, Any]) -> list[Any]:
        x = np.stack([c[0] for c in chunk])
        t0 = time.perf_counter()
        out = self.infer(x)
        t1 = time.perf_counter()
        res = self.adapter.postprocess(out, [c[1] for c in chunk], **opts)
        t2 = time.perf_counter()
        self.times.inference.append((t1 - t0) / len(chunk))
        self.times.postprocess.append((t2 - t1) / len(chunk))
        return res

    def __call__(self, images: Any, **options: Any) -> Any:
        """Predict one image (path or BGR array) -> one result; a list -> a list of results.

        Raises:
            ImageDecodeError: an image path cannot be read (use ``stream`` to skip bad files instead).
        """
        single = not isinstance(images, (list, tuple))
        seq = [images] if single else list(images)
        arrays = [im if isinstance(im, np.ndarray) else read_image(im) for im in seq]
        res = self.predict_arrays(arrays, **options)
        return res[0] if single else res

    def stream(self, source: Any, *, keep_images: bool = False, vid_stride: int = 1, requests: int | None = None,
               **options: Any) -> Iterator[Outcome]:
        """Predict every item of a source, in order; bad items are yielded with their error, not raised.

        The stages overlap: a dispatcher thread reads the source and hands decoding + preprocessing to
        ``workers`` threads (bounded look-ahead), batches the results in input order and starts inference
        through the session's :class:`~unideploy.backends.base.AsyncRunner` (``requests`` runs in flight:
        OpenVINO infer requests, ONNX Runtime runs); a postprocess thread turns each batch's
        outputs into results while the next batches run. Every queue is bounded, and closing the generator
        (``break``, an exception, Ctrl-C) stops and joins all of its threads before it returns.

        Args:
            source: anything :class:`~unideploy.sources.Source` accepts, or a Source.
            keep_images: attach the decoded image to each Outcome (for drawing).
            vid_stride: use every N-th video frame.
            requests: inference runs in flight (default: the Predictor's ``requests``).
            **options: postprocessing overrides (conf, iou, max_det, ...).

        Raises:
            SourceError: the source names nothing usable (before the first item).
            BackendError: the runtime failed on a batch.

        Example:
            >>> with unideploy.load("model.onnx") as p:  # doctest: +SKIP
            ...     for out in p.stream("images/"):
            ...         print(out.item.name, out.result if out.ok else out.error)
        """
        ctl = _StreamControl()
        gen = self._stream(source, keep_images, vid_stride, requests, options, ctl)
        self._streams[gen] = ctl
        return gen

    def _stream(self, source: Any, keep_images: bool, vid_stride: int, requests: int | None,
                options: dict[str, Any], ctl: _StreamControl) -> Iterator[Outcome]:
        ctl.owner = threading.get_ident()
        try:
            yield from self._pipeline(source, keep_images, vid_stride, requests, options, ctl.stop)
        except _Stopped:
            pass
        finally:
            ctl.finished.set()
        if ctl.closed:  # Predictor.close() from another thread ended this stream mid-way
            raise BackendError(f"{self.path.name}: the predictor was closed while a stream was reading from it")

    def _pipeline(self, source: Any, keep_images: bool, vid_stride: int, requests: int | None,
                  options: dict[str, Any], stop: threading.Event) -> Iterator[Outcome]:
        src = source if isinstance(source, Source) else Source(source, vid_stride)
        opts = {**self.options, **options}
        n_req = max(1, int(requests or self.requests))
        # slots in input order: ("err", Outcome) | ("batch", Future[results], rows) | ("exc", exception)
        out_q: queue.Queue = queue.Queue(maxsize=n_req + 2)
        pool: list[np.ndarray] = []  # input batch buffers the runtime has finished with
        pool_lock = threading.Lock()
        reuse = self.adapter.reuses_batch_buffer
        times = self.times

        def put(entry: tuple) -> bool:
            while not stop.is_set():
                try:
                    out_q.put(entry, timeout=_POLL)
                    return True
                except queue.Full:
                    continue
            return False

        def load(item: Item) -> tuple[np.ndarray | None, np.ndarray, LetterboxInfo, float]:
            if stop.is_set():
                raise _Stopped()
            t0 = time.perf_counter()
            img = item.load()
            t1 = time.perf_counter()
            resized, info = self.prepare(img)
            t2 = time.perf_counter()
            times.decode.append(t1 - t0)
            # the look-ahead holds model-sized uint8 images only: the decoded frame is dropped here unless the
            # caller wants it back (up to 6 MB at 1080p), the float tensor is made per batch in flush()
            return (img if keep_images else None), resized, info, t2 - t1

        def post(fut: Future, rows: list[tuple[Item, np.ndarray | None, LetterboxInfo]], x: np.ndarray) -> list[Any]:
            out = _wait(fut, stop)
            if reuse:
                with pool_lock:  # the runtime is done with the input: its buffer serves a later batch
                    if len(pool) <= n_req:
                        pool.append(x)
            n = len(rows)
            t_inf = getattr(fut, "finished", 0.0) - getattr(fut, "started", 0.0)
            if self.fixed_batch and n < self.fixed_batch:
                out = [o[:n] if o.ndim and o.shape[0] == self.fixed_batch else o for o in out]
            t1 = time.perf_counter()
            res = self.adapter.postprocess(out, [r[2] for r in rows], **opts)
            t2 = time.perf_counter()
            times.inference.append(t_inf / n)
            times.postprocess.append((t2 - t1) / n)
            return res

        # rows: (item, decoded image or None, resized uint8 image, mapping, resize seconds)
        def flush(rows: list[tuple[Item, np.ndarray | None, np.ndarray, LetterboxInfo, float]]) -> bool:
            t0 = time.perf_counter()
            with pool_lock:
                buf = pool.pop() if pool else None
            x = self.adapter.to_batch([r[2] for r in rows], self.fixed_batch, out=buf)
            share = (time.perf_counter() - t0) / len(rows)
            for r in rows:
                times.preprocess.append(r[4] + share)
            fut = runner.submit({self.session.inputs[0].name: x})
            kept = [(r[0], r[1], r[3]) for r in rows]  # r[1] is None unless keep_images (load())
            return put(("batch", post_pool.submit(post, fut, kept, x), kept))

        def dispatch() -> None:
            try:
                window: deque[tuple[Item, Future]] = deque()
                it = iter(src)
                rows: list[tuple[Item, np.ndarray | None, np.ndarray, LetterboxInfo, float]] = []
                exhausted = False
                while not stop.is_set():
                    while not exhausted and len(window) < ahead:
                        try:
                            item = next(it)
                        except StopIteration:
                            exhausted = True
                            break
                        window.append((item, pre_pool.submit(load, item)))
                    if not window:
                        break
                    item, fut = window.popleft()
                    try:
                        img, resized, info, prep_s = _wait(fut, stop)
                    except UnideployError as e:
                        if rows and not flush(rows):  # keep input order: what precedes the failure goes first
                            return
                        rows = []
                        if not put(("err", Outcome(item, error=e))):
                            return
                        continue
                    rows.append((item, img, resized, info, prep_s))
                    if len(rows) == self.batch:
                        if not flush(rows):
                            return
                        rows = []
                if rows and not stop.is_set():
                    flush(rows)
            except _Stopped:
                pass
            except BaseException as e:  # a bug or a runtime failure: re-raised in the consumer
                put(("exc", e))
            finally:
                for _, fut in window:
                    fut.cancel()
                put(("done",))

        ahead = max(2 * self.batch, 2 * self.workers + 1)
        pre_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="unideploy-pre")
        post_pool = ThreadPoolExecutor(1, thread_name_prefix="unideploy-post")
        runner = self.session.async_runner(n_req)
        dispatcher = threading.Thread(target=dispatch, name="unideploy-dispatch", daemon=True)
        try:
            dispatcher.start()
            while True:
                if stop.is_set():  # set from outside only by Predictor.close()
                    raise _Stopped()
                try:
                    entry = out_q.get(timeout=_POLL)
                except queue.Empty:
                    continue
                kind = entry[0]
                if kind == "done":
                    break
                if kind == "exc":
                    raise entry[1]
                if kind == "err":
                    yield entry[1]
                    continue
                results = _wait(entry[1], stop)
                for (item, img, _), r in zip(entry[2], results):
                    yield Outcome(item, r, image=img)
        finally:
            stop.set()
            while dispatcher.is_alive():
                try:  # unblock a dispatcher waiting to put
                    while True:
                        out_q.get_nowait()
                except queue.Empty:
                    pass
                dispatcher.join(_POLL)
            pre_pool.shutdown(wait=True, cancel_futures=True)
            post_pool.shutdown(wait=True, cancel_futures=True)
            runner.close()

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
        me = threading.get_ident()
        for gen, ctl in list(self._streams.items()):
            ctl.closed = True
            ctl.stop.set()
            if ctl.owner is None or ctl.owner == me:
                try:
                    gen.close()
                    continue
                except ValueError:  # being resumed by another thread right now
                    pass
            ctl.finished.wait(_CLOSE_WAIT)
        self.session.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Predictor {self.path.name} {self.adapter.name} on {self.backend_name}:{self.session.device} imgsz={self.spec.imgsz}>"


def load(model: str | os.PathLike, backend: str | None = None, device: str | None = None, **kwargs: Any) -> Predictor:
    """Open a model for prediction. See :class:`Predictor` for the arguments.

    Example:
        >>> import unideploy
        >>> predictor = unideploy.load("model.onnx", backend="openvino", device="CPU")  # doctest: +SKIP
        >>> dets = predictor(["a.jpg", "b.jpg"])  # doctest: +SKIP

    With ``backend="torch"`` and a CUDA device, the GPU end-to-end predictor (nvJPEG decode, GPU letterbox
    and NMS, overlapped stages; see :mod:`unideploy.gpu`) is returned instead, with the same interface.
    """
    from .gpu import wants_gpu_pipeline

    if wants_gpu_pipeline(backend, device, model):
        from .gpu.pipeline import GpuPredictor

        return GpuPredictor(model, device=device, **kwargs)  # type: ignore[return-value]
    return Predictor(model, backend, device, **kwargs)
