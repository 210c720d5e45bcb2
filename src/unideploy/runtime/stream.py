"""The threaded streaming engine behind ``Predictor.stream``: decode, preprocess, infer and postprocess overlapped.

Decoding and preprocessing run in worker threads (OpenCV releases the GIL) with a bounded look-ahead, inference
goes through the session's ``AsyncRunner`` with several runs in flight, and postprocessing has its own thread;
results come back in input order, and closing the stream (or the predictor) joins every thread it started.

The engine drives any object with the :class:`StreamModel` attributes (a
:class:`~unideploy.runtime.predictor.Predictor`); it does not import the predictor.

Example:
    >>> with unideploy.load("model.onnx") as p:  # doctest: +SKIP
    ...     for out in p.stream("images/"):  # this engine, through Predictor.stream
    ...         print(out.item.name, out.result if out.ok else out.error)
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from unideploy.core.errors import BackendError, UnideployError
from unideploy.core.ops.letterbox import LetterboxInfo
from unideploy.core.options import PostprocessOptions
from unideploy.core.sources import Item, Outcome, Source
from unideploy.runtime.backends.base import Session
from unideploy.runtime.families.base import Adapter

__all__ = ["TIMES_KEPT", "Outcome", "StageTimes", "StreamControl", "StreamModel", "close_streams", "run_stream"]

#: seconds between checks of a stream's stop flag while a thread waits
POLL = 0.05
#: per-stage timing samples a Predictor keeps (the most recent; older ones are dropped)
TIMES_KEPT = 10_000
#: seconds Predictor.close() waits for a stream that another thread is iterating
CLOSE_WAIT = 10.0


class Stopped(Exception):
    """Internal: a stream was closed while a stage was waiting."""


@dataclass
class StreamControl:
    """Shared between a stream's generator and Predictor.close(): who iterates it, stop and done flags."""

    stop: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    owner: int | None = None
    closed: bool = False


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


class StreamModel(Protocol):
    """What the engine needs of a predictor."""

    path: Path
    session: Session
    adapter: Adapter
    batch: int
    fixed_batch: int | None
    workers: int
    requests: int
    times: StageTimes

    def prepare(self, img: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]: ...


def wait(fut: Future, stop: threading.Event) -> Any:
    """``fut.result()``, waking up regularly so that a closed stream (or Ctrl-C) is noticed."""
    while True:
        try:
            return fut.result(timeout=POLL)
        except FutureTimeout:
            if stop.is_set():
                raise Stopped() from None


def run_stream(model: StreamModel, source: Any, keep_images: bool, vid_stride: int, requests: int | None,
               options: PostprocessOptions, ctl: StreamControl) -> Iterator[Outcome]:
    """The generator ``Predictor.stream`` returns: the engine's outcomes, ended cleanly when ``ctl`` says stop.

    Raises:
        BackendError: the predictor was closed from another thread while this stream was being read.
    """
    ctl.owner = threading.get_ident()
    try:
        yield from _engine(model, source, keep_images, vid_stride, requests, options, ctl.stop)
    except Stopped:
        pass
    finally:
        ctl.finished.set()
    if ctl.closed:  # Predictor.close() from another thread ended this stream mid-way
        raise BackendError(f"{model.path.name}: the predictor was closed while a stream was reading from it")


def close_streams(streams: weakref.WeakKeyDictionary) -> None:
    """Stop every stream in ``streams`` (generator -> StreamControl), joining their threads.

    A stream suspended in this thread (or never started) is closed here. A stream another thread is iterating
    is told to stop; that thread's next ``next()`` (or its wait inside one) ends it with a BackendError, and
    this call waits for it (up to ``CLOSE_WAIT`` seconds).
    """
    me = threading.get_ident()
    for gen, ctl in list(streams.items()):
        ctl.closed = True
        ctl.stop.set()
        if ctl.owner is None or ctl.owner == me:
            try:
                gen.close()
                continue
            except ValueError:  # being resumed by another thread right now
                pass
        ctl.finished.wait(CLOSE_WAIT)


def _engine(model: StreamModel, source: Any, keep_images: bool, vid_stride: int, requests: int | None,
            opts: PostprocessOptions, stop: threading.Event) -> Iterator[Outcome]:
    src = source if isinstance(source, Source) else Source(source, vid_stride)
    adapter, session, times = model.adapter, model.session, model.times
    n_req = max(1, int(requests or model.requests))
    # slots in input order: ("err", Outcome) | ("batch", Future[results], rows) | ("exc", exception)
    out_q: queue.Queue = queue.Queue(maxsize=n_req + 2)
    pool: list[np.ndarray] = []  # input batch buffers the runtime has finished with
    pool_lock = threading.Lock()
    reuse = adapter.reuses_batch_buffer

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                out_q.put(entry, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def load(item: Item) -> tuple[np.ndarray | None, np.ndarray, LetterboxInfo, float]:
        if stop.is_set():
            raise Stopped()
        t0 = time.perf_counter()
        img = item.load()
        t1 = time.perf_counter()
        resized, info = model.prepare(img)
        t2 = time.perf_counter()
        times.decode.append(t1 - t0)
        # the look-ahead holds model-sized uint8 images only: the decoded frame is dropped here unless the
        # caller wants it back (up to 6 MB at 1080p), the float tensor is made per batch in flush()
        return (img if keep_images else None), resized, info, t2 - t1

    def post(fut: Future, rows: list[tuple[Item, np.ndarray | None, LetterboxInfo]], x: np.ndarray) -> list[Any]:
        out = wait(fut, stop)
        if reuse:
            with pool_lock:  # the runtime is done with the input: its buffer serves a later batch
                if len(pool) <= n_req:
                    pool.append(x)
        n = len(rows)
        t_inf = getattr(fut, "finished", 0.0) - getattr(fut, "started", 0.0)
        if model.fixed_batch and n < model.fixed_batch:
            out = [o[:n] if o.ndim and o.shape[0] == model.fixed_batch else o for o in out]
        t1 = time.perf_counter()
        res = adapter.postprocess(out, [r[2] for r in rows], opts)
        t2 = time.perf_counter()
        times.inference.append(t_inf / n)
        times.postprocess.append((t2 - t1) / n)
        return res

    # rows: (item, decoded image or None, resized uint8 image, mapping, resize seconds)
    def flush(rows: list[tuple[Item, np.ndarray | None, np.ndarray, LetterboxInfo, float]]) -> bool:
        t0 = time.perf_counter()
        with pool_lock:
            buf = pool.pop() if pool else None
        x = adapter.to_batch([r[2] for r in rows], model.fixed_batch, out=buf)
        share = (time.perf_counter() - t0) / len(rows)
        for r in rows:
            times.preprocess.append(r[4] + share)
        fut = runner.submit({session.inputs[0].name: x})
        kept = [(r[0], r[1], r[3]) for r in rows]  # r[1] is None unless keep_images (load())
        return put(("batch", post_pool.submit(post, fut, kept, x), kept))

    def dispatch() -> None:
        window: deque[tuple[Item, Future]] = deque()
        try:
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
                    img, resized, info, prep_s = wait(fut, stop)
                except UnideployError as e:
                    if rows and not flush(rows):  # keep input order: what precedes the failure goes first
                        return
                    rows = []
                    if not put(("err", Outcome(item, error=e))):
                        return
                    continue
                rows.append((item, img, resized, info, prep_s))
                if len(rows) == model.batch:
                    if not flush(rows):
                        return
                    rows = []
            if rows and not stop.is_set():
                flush(rows)
        except Stopped:
            pass
        except BaseException as e:  # a bug or a runtime failure: re-raised in the consumer
            put(("exc", e))
        finally:
            for _, fut in window:
                fut.cancel()
            put(("done",))

    ahead = max(2 * model.batch, 2 * model.workers + 1)
    pre_pool = ThreadPoolExecutor(model.workers, thread_name_prefix="unideploy-pre")
    post_pool = ThreadPoolExecutor(1, thread_name_prefix="unideploy-post")
    runner = session.async_runner(n_req)
    dispatcher = threading.Thread(target=dispatch, name="unideploy-dispatch", daemon=True)
    try:
        dispatcher.start()
        while True:
            if stop.is_set():  # set from outside only by Predictor.close()
                raise Stopped()
            try:
                entry = out_q.get(timeout=POLL)
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
            results = wait(entry[1], stop)
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
            dispatcher.join(POLL)
        pre_pool.shutdown(wait=True, cancel_futures=True)
        post_pool.shutdown(wait=True, cancel_futures=True)
        runner.close()
