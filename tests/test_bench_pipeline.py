"""The pipelined Predictor.stream and the async runners: order, errors in place, clean shutdown.

Uses the probe model of bench_helpers (each result names its image), on ONNX Runtime and OpenVINO.
No timed assertions: delays only shuffle the order in which workers finish.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import ClassVar

import numpy as np
import pytest
from bench_helpers import build_probe_model, probe_images
from conftest import REPO, has_module
from reliability_helpers import close_during_stream

import unideploy
from unideploy.core.errors import BackendError, ImageDecodeError, InputError
from unideploy.core.sources import Item, Source

pytest.importorskip("onnx")

BACKENDS = ["onnxruntime"] + (["openvino"] if has_module("openvino") else [])


def unideploy_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("unideploy"))


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    return {"model": build_probe_model(d / "model"), "static": build_probe_model(d / "static", batch=1),
            "images": probe_images(d / "images", 12), "folder": d / "images"}


class DelayedSource(Source):
    """Probe arrays whose loading takes random time (so workers finish out of order), with optional
    failures: ``bad`` indices raise ImageDecodeError; ``boom`` raises ``boom_exc`` from the load."""

    def __init__(self, images, bad=(), boom=None, boom_exc=RuntimeError, seed=0, hook=None):
        super().__init__([])
        self.images = images
        self.bad, self.boom, self.boom_exc, self.hook = set(bad), boom, boom_exc, hook
        self.rng = random.Random(seed)
        self.delays = [self.rng.uniform(0, 0.01) for _ in images]

    def __len__(self):
        return len(self.images)

    def __iter__(self):
        for i, (path, v, side) in enumerate(self.images):
            def load(i=i, v=v, side=side):
                time.sleep(self.delays[i])
                if self.hook is not None:
                    self.hook(i)
                if i == self.boom:
                    raise self.boom_exc(f"boom at {i}")
                if i in self.bad:
                    raise ImageDecodeError(f"item{i}: expected an image, got garbage")
                return np.full((side, side, 3), v, np.uint8)
            yield Item(f"item{i}", i, load)


def check_outcome(out, i, images):
    _, v, side = images[i]
    assert out.item.index == i and out.item.name == f"item{i}"
    assert out.ok, out.error
    assert out.result.image_shape == (side, side)
    assert len(out.result) == 1 and abs(float(out.result.confidence[0]) - v / 255) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,requests,workers", [(1, 1, 1), (1, 3, 2), (4, 2, 3), (5, 4, 2)])
def test_results_come_back_in_input_order(probe, backend, batch, requests, workers):
    images = probe["images"]
    with unideploy.load(probe["model"], backend=backend, batch=batch, workers=workers, requests=requests) as p:
        for seed in range(3):
            outs = list(p.stream(DelayedSource(images, seed=seed)))
            assert len(outs) == len(images)
            for i, out in enumerate(outs):
                check_outcome(out, i, images)
    assert unideploy_threads() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_folder_stream_matches_one_by_one_prediction(probe, backend):
    with unideploy.load(probe["model"], backend=backend, batch=3) as p:
        streamed = list(p.stream(probe["folder"], keep_images=True))
        one_by_one = [p(path) for path, _, _ in probe["images"]]
    assert [o.item.path for o in streamed] == [path for path, _, _ in probe["images"]]
    for out, ref, (_, v, side) in zip(streamed, one_by_one, probe["images"]):
        np.testing.assert_array_equal(out.result.xyxy, ref.xyxy)
        np.testing.assert_array_equal(out.result.confidence, ref.confidence)
        assert out.image.shape == (side, side, 3) and int(out.image[0, 0, 0]) == v


@pytest.mark.parametrize("batch", [1, 3])
def test_bad_items_are_yielded_in_place(probe, batch):
    images = probe["images"]
    bad = {0, 4, 5, 11}
    with unideploy.load(probe["model"], batch=batch, requests=2) as p:
        outs = list(p.stream(DelayedSource(images, bad=bad, seed=1)))
    assert [o.item.index for o in outs] == list(range(len(images)))
    for i, out in enumerate(outs):
        if i in bad:
            assert not out.ok and isinstance(out.error, ImageDecodeError) and f"item{i}" in str(out.error)
        else:
            check_outcome(out, i, images)


def test_static_batch_model_pads_the_last_batch(probe):
    with unideploy.load(probe["static"]) as p:
        assert p.fixed_batch == 1
        outs = list(p.stream(DelayedSource(probe["images"][:5])))
    for i, out in enumerate(outs):
        check_outcome(out, i, probe["images"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_mid_stream_propagates_and_stops_every_thread(probe, backend):
    with unideploy.load(probe["model"], backend=backend, batch=2, requests=2) as p:
        seen = []
        with pytest.raises(RuntimeError, match="boom at 7"):
            for out in p.stream(DelayedSource(probe["images"], boom=7)):
                seen.append(out.item.index)
        assert seen == list(range(len(seen))) and len(seen) <= 7
        assert unideploy_threads() == []
        # the predictor still works afterwards
        assert len(list(p.stream(DelayedSource(probe["images"][:3])))) == 3
    assert unideploy_threads() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_closed_early_stops_every_thread(probe, backend):
    with unideploy.load(probe["model"], backend=backend, requests=3) as p:
        gen = p.stream(DelayedSource(probe["images"] * 4))
        first = [next(gen) for _ in range(3)]
        assert [o.item.index for o in first] == [0, 1, 2]
        assert unideploy_threads()  # the pipeline is running
        gen.close()
        assert unideploy_threads() == []
        for out in p.stream(probe["folder"]):  # break out of a for loop
            break
        del out
        assert unideploy_threads() == []


def test_predictor_close_stops_an_open_stream(probe):
    p = unideploy.load(probe["model"], requests=2)
    gen = p.stream(DelayedSource(probe["images"] * 4))
    next(gen)
    p.close()
    assert unideploy_threads() == []
    with pytest.raises(StopIteration):
        next(gen)


def test_keyboard_interrupt_raised_in_a_worker_reaches_the_caller(probe):
    with unideploy.load(probe["model"], batch=2) as p:
        with pytest.raises(KeyboardInterrupt):
            list(p.stream(DelayedSource(probe["images"], boom=5, boom_exc=KeyboardInterrupt)))
        assert unideploy_threads() == []


def test_ctrl_c_while_waiting_stops_every_thread(probe):
    """A real SIGINT delivered to the main thread while it waits inside the stream."""
    main_id = threading.main_thread().ident
    fired = threading.Event()

    def hook(i):
        if i == 6 and not fired.is_set():
            fired.set()
            signal.pthread_kill(main_id, signal.SIGINT)
            time.sleep(0.3)  # keep the main thread waiting for this item

    # Python's own Ctrl-C handler, whatever the environment gave this process (a job started in the background by
    # a non-interactive shell inherits SIGINT ignored, and Python then leaves it ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with unideploy.load(probe["model"], requests=2) as p:
            got = []
            with pytest.raises(KeyboardInterrupt):
                for out in p.stream(DelayedSource(probe["images"], hook=hook)):
                    got.append(out.item.index)
            assert fired.is_set() and got == list(range(len(got)))
            assert unideploy_threads() == []
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_runner_matches_run_and_validates(probe, backend):
    from unideploy.runtime.backends.registry import get_backend

    x = np.stack([np.full((3, 32, 32), v / 255, np.float32) for v in (10, 100, 200)])
    with get_backend(backend).open(probe["model"]) as s:
        ref = s.run(x)[0]
        assert s.optimal_requests() >= 1
        with s.async_runner(2) as runner:
            futures = [runner.submit(x[i : i + 1]) for i in range(3)] * 1
            outs = [f.result()[0] for f in futures]
            assert all(f.finished >= f.started for f in futures)
            with pytest.raises(InputError, match=r"input 'images' expects"):
                runner.submit(np.zeros((1, 32, 32, 3), np.float32))
        for i, o in enumerate(outs):
            np.testing.assert_allclose(o, ref[i : i + 1], rtol=1e-6)
        with pytest.raises(BackendError, match="closed"):
            runner.submit(x[:1])
    assert unideploy_threads() == []


def test_async_runner_delivers_runtime_errors_through_the_future(probe):
    from unideploy.runtime.backends.base import AsyncRunner

    class Failing:
        inputs: ClassVar[list] = []

        def check_feeds(self, feeds):
            return feeds

        def run(self, feeds):
            raise BackendError("runtime exploded")

    with AsyncRunner(Failing(), 2) as runner:  # type: ignore[arg-type]
        fut = runner.submit({})
        with pytest.raises(BackendError, match="exploded"):
            fut.result()
    with pytest.raises(InputError, match="requests must be a positive integer"):
        AsyncRunner(Failing(), 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_from_another_thread_ends_the_stream_with_an_error(probe, backend):
    p = unideploy.load(probe["model"], backend=backend, requests=2)
    end = close_during_stream(p, DelayedSource(probe["images"] * 50), pause=0.002, timeout=60)
    assert end.startswith("BackendError") and "closed while a stream was reading" in end, end
    assert unideploy_threads() == []


@pytest.mark.parametrize("model", ["src/unideploy/assets/demo/shapes_yolov8.onnx", "examples/shapes_crop_cls.onnx"])
def test_stream_batches_equal_per_image_tensors(model):
    """The stream keeps uint8 letterboxed images in its look-ahead and builds each float batch in place
    (into a reused buffer): bit-identical to stacking the per-image tensors, padding included."""
    path = REPO / model
    rng = np.random.default_rng(3)
    with unideploy.load(path) as pred:
        imgs = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(90, 200), (480, 640), (50, 50)]]
        resized = [pred.prepare(im)[0] for im in imgs]
        ref = np.stack([pred.preprocess(im)[0] for im in imgs])
        got = pred.adapter.to_batch(resized)
        assert got.dtype == ref.dtype and np.array_equal(got, ref)
        padded = pred.adapter.to_batch(resized, 5)
        assert padded.shape[0] == 5 and np.array_equal(padded[:3], ref) and not padded[3:].any()
        buf = np.full(ref.shape, np.nan, np.float32)
        assert pred.adapter.to_batch(resized, out=buf) is buf and np.array_equal(buf, ref)
        wrong = np.zeros((1, 3, 8, 8), np.float32)  # a buffer of another shape is not written into
        assert pred.adapter.to_batch(resized, out=wrong) is not wrong


@pytest.mark.parametrize("layout,dtype", [("nchw", "float32"), ("nchw", "float16"), ("nchw", "uint8"),
                                          ("nhwc", "float32"), ("nhwc", "uint8")])
def test_reuses_batch_buffer_says_when_to_batch_writes_into_out(layout, dtype):
    """The stream pools an input batch for reuse only when to_batch would write into it; for other layouts and
    dtypes it builds a new array each time, and a pooled buffer would only hold memory."""
    from dataclasses import replace

    with unideploy.load(REPO / "src/unideploy/assets/demo/shapes_yolov8.onnx") as pred:
        adapter = type(pred.adapter)(replace(pred.adapter.spec, layout=layout, input_dtype=dtype))
    h, w = adapter.spec.imgsz
    imgs = [np.full((h, w, 3), k * 40, np.uint8) for k in range(2)]
    first = adapter.to_batch(imgs)
    buf = first if first.dtype == np.float32 else np.empty(first.shape, np.float32)
    assert (adapter.to_batch(imgs, out=buf) is buf) == adapter.reuses_batch_buffer
    assert adapter.reuses_batch_buffer == (layout == "nchw" and dtype == "float32")
