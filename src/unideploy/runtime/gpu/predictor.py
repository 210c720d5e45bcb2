"""The GPU end-to-end predictor: encoded files -> detections with every pixel operation on the device.

::

    reader thread          files -> bytes (np.fromfile), video frames -> arrays           bounded queue (2 batches)
    preprocess thread      nvJPEG batch decode -> letterbox (OpenCV-exact) -> normalise,  on its own CUDA stream,
                           into the next input batch; an event marks it ready            bounded queue (2 batches)
    caller's thread        inference stream waits on that event -> CUDA-graph forward -> batched NMS + unletterbox
                           -> one device-to-host copy -> Detections, yielded in input order

so reading and decoding of batch k+1 run while batch k is in the network. Failed items (unreadable,
undecodable) come out as :class:`~unideploy.runtime.stream.Outcome` errors in their place, as in the CPU
predictor's stream.

The same code runs on CPU tensors (no streams, OpenCV decoding), which is how it is tested without a GPU:
on the CPU it gives the CPU predictor's detections (tests/test_gpu_pipeline.py).

Example:
    >>> from unideploy.runtime.gpu import GpuPredictor
    >>> with GpuPredictor("yolov8n.pt", device="cuda:0", batch=64, precision="fp16") as p:  # doctest: +SKIP
    ...     for out in p.stream("images/"):
    ...         print(out.item.name, len(out.result))
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from unideploy.core.errors import DeviceError, ImageDecodeError, ModelError, OptionError, UnideployError
from unideploy.core.options import PostprocessOptions
from unideploy.core.results import Detections
from unideploy.core.sources import Item, Source, read_image
from unideploy.runtime.gpu.decode import decode_batch
from unideploy.runtime.gpu.letterbox import letterbox_batch, normalize_batch
from unideploy.runtime.gpu.postprocess import postprocess_batch
from unideploy.runtime.gpu.tasks import postprocess_pose, postprocess_segment
from unideploy.runtime.predictor import Predictor
from unideploy.runtime.stream import Outcome

__all__ = ["DEFAULT_BATCH", "GPU_FAMILIES", "GpuPredictor"]

_END = object()
DEFAULT_BATCH = 32  # images per forward pass when the caller gives none
#: families the GPU predictor runs (segmentation and pose postprocessed on the device, oriented boxes on the host)
GPU_FAMILIES = ("yolo", "yolo_seg", "yolo_pose", "yolo_obb")


def _read(item: Item) -> tuple[str, Any]:
    """("bytes", encoded array) for an image file, ("array", BGR image) for anything else; errors as values."""
    try:
        if item.path is not None and item.frame is None:
            try:
                data = np.fromfile(item.path, np.uint8)
            except OSError as e:
                return "error", ImageDecodeError(f"{item.path}: expected a readable image file, got {type(e).__name__}: {e.strerror or e}")
            return "bytes", data
        return "array", item.load()
    except UnideployError as e:
        return "error", e


class GpuPredictor(Predictor):
    """A PyTorch YOLO detector whose every stage runs on its device; same API as :class:`Predictor`.

    Args:
        model: a model the torch backend opens (.pt, TorchScript, torch.export).
        device: "cuda:N" (or "cpu" with ``allow_cpu=True``, for tests).
        batch: images per forward pass (one CUDA graph per batch size); None means ``DEFAULT_BATCH`` (32).
        allow_cpu: allow a CPU device (no streams, OpenCV decoding).
        **kwargs: as :class:`Predictor` (conf, iou, max_det, imgsz, classes, ...) and torch backend options
            (precision, cuda_graph, compile).

    Raises:
        DeviceError: the device is not CUDA and ``allow_cpu`` is False.
        ModelError: the model is not a letterboxed YOLO detector with the raw (B, 4 + nc, N) head.
    """

    def __init__(self, model: Any, device: str = "cuda:0", *, batch: int | None = None, allow_cpu: bool = False, **kwargs: Any) -> None:
        kwargs.pop("backend", None)
        if kwargs.get("fast_decode"):  # nvJPEG has no DCT-scaled decode: refuse rather than ignore it
            raise OptionError("fast_decode", "the GPU predictor decodes JPEGs at full size with nvJPEG (no reduced-scale "
                                             "decode there); drop fast_decode, or use backend onnxruntime/openvino")
        # None (also the CLI without --batch) means this predictor's default, not the CPU predictor's 1
        super().__init__(model, "torch", device, batch=DEFAULT_BATCH if batch is None else batch, **kwargs)
        try:
            import torch

            self.torch = torch
            sess = self.session
            self.tdev = sess.tdev  # type: ignore[attr-defined]
            if self.tdev.type != "cuda" and not allow_cpu:
                raise DeviceError(f"the GPU predictor needs a CUDA device, got {device!r}; use unideploy.load for "
                                  f"other devices")
            if (self.adapter.name not in GPU_FAMILIES or self.spec.resize not in ("letterbox", "letterbox_topleft")
                    or self.spec.layout != "nchw"):
                raise ModelError(f"the GPU predictor runs letterboxed NCHW YOLO detect/segment/pose/obb models; this model is "
                                 f"{self.adapter.name} with resize={self.spec.resize}: use unideploy.load")
            self.cuda = self.tdev.type == "cuda"
            self._pre_stream = torch.cuda.Stream(device=self.tdev) if self.cuda else None
            self._inf_stream = torch.cuda.Stream(device=self.tdev) if self.cuda else None
            self.dtype = sess.dtype  # type: ignore[attr-defined]
        except BaseException:
            self.session.close()
            raise

    # -- stages ---------------------------------------------------------------------------------
    def _stream_ctx(self, s: Any) -> Any:
        return self.torch.cuda.stream(s) if s is not None else contextlib.nullcontext()

    def _to_tensors(self, kinds: Sequence[str], payloads: Sequence[Any], names: Sequence[str]) -> list[Any]:
        """Decoded (3, H, W) RGB uint8 tensors on the device, or the error of each item."""
        torch = self.torch
        out: list[Any] = [None] * len(kinds)
        enc = [i for i, k in enumerate(kinds) if k == "bytes"]
        if enc:
            for i, t in zip(enc, decode_batch([payloads[i] for i in enc], [names[i] for i in enc], self.tdev)):
                out[i] = t
        for i, k in enumerate(kinds):
            if k == "array":
                img = payloads[i]
                if img.ndim == 2:
                    img = np.repeat(img[..., None], 3, axis=2)
                rgb = np.ascontiguousarray(img[..., 2::-1].transpose(2, 0, 1))
                out[i] = torch.from_numpy(rgb).to(self.tdev, non_blocking=True)
            elif k == "error":
                out[i] = payloads[i]
        return out

    def _preprocess(self, tensors: Sequence[Any]) -> tuple[Any, list[Any]]:
        spec = self.spec
        h, w = spec.imgsz  # type: ignore[misc]
        batch, infos = letterbox_batch(tensors, (h, w), pad_value=spec.pad_value, center=spec.resize == "letterbox")
        x = normalize_batch(batch, dtype=self.dtype, scale=spec.scale, mean=spec.mean, std=spec.std,
                            reverse_channels=spec.channel_order == "bgr")
        return x, infos

    def _infer_post(self, x: Any, infos: list[Any], opts: PostprocessOptions) -> list[Detections]:
        n = x.shape[0]
        if self.fixed_batch and n < self.fixed_batch:
            pad = self.torch.zeros((self.fixed_batch - n, *x.shape[1:]), dtype=x.dtype, device=x.device)
            x = self.torch.cat([x, pad])
        outs = self.session.run_tensor(x, clone=False)  # type: ignore[attr-defined]
        if self.adapter.name != "yolo":
            return self._infer_post_task(outs, n, infos, opts)
        pred = outs[0]
        if pred.ndim == 3 and self.adapter._is_end2end(np.empty((1, *pred.shape[1:]), np.float32)):  # (B, K, 6) heads
            return self.adapter.postprocess([pred[:n].float().cpu().numpy()], infos, opts)
        return postprocess_batch(pred, infos, opts, names=self.spec.names, nc=self.spec.num_classes or None)

    def _infer_post_task(self, outs: Sequence[Any], n: int, infos: list[Any], opts: PostprocessOptions) -> list[Any]:
        """Segmentation and pose heads on the device (:mod:`unideploy.runtime.gpu.tasks`); oriented boxes and
        end-to-end heads through the family's CPU adapter (one copy of the raw outputs)."""
        adapter, spec = self.adapter, self.spec
        o = adapter.resolve_options(opts)
        preds = [t for t in outs if t.ndim == 3]
        protos = [t for t in outs if t.ndim == 4]
        pred = preds[0] if preds else outs[0]
        if adapter.name == "yolo_seg" and len(preds) == 1 and len(protos) == 1:
            nm = int(protos[0].shape[1])
            e2e = spec.end2end if spec.end2end is not None else (pred.shape[2] == 6 + nm and pred.shape[1] != 6 + nm)
            if not e2e:
                ratio = max(1, round(spec.imgsz[0] / protos[0].shape[2]))  # type: ignore[index]
                nc = spec.num_classes or pred.shape[1] - 4 - nm
                return postprocess_segment(pred, protos[0], infos, o, names=spec.names, nc=nc, ratio=ratio)
        if adapter.name == "yolo_pose" and len(outs) == 1:
            k, d = adapter.kpt_shape  # type: ignore[attr-defined]
            e2e = spec.end2end if spec.end2end is not None else (pred.shape[2] == 6 + k * d and pred.shape[1] != 6 + k * d)
            if not e2e:
                return postprocess_pose(pred, infos, o, names=spec.names, nc=pred.shape[1] - 4 - k * d, kpt_shape=(k, d))
        return adapter.postprocess([t[:n].float().cpu().numpy() for t in outs], infos, opts)

    # -- public ---------------------------------------------------------------------------------
    def predict_tensors(self, images: Sequence[Any], **options: Any) -> list[Detections]:
        """Detections for (3, H, W) RGB uint8 tensors already on the device."""
        opts = self.postprocess_options(**options)
        results: list[Detections] = []
        for i in range(0, len(images), self.batch):
            x, infos = self._preprocess(images[i : i + self.batch])
            results.extend(self._infer_post(x, infos, opts))
        return results

    def predict_arrays(self, images: Sequence[np.ndarray], **options: Any) -> list[Any]:
        """Detections for decoded BGR uint8 arrays (uploaded, then letterboxed on the device)."""
        tensors = self._to_tensors(["array"] * len(images), list(images), [f"array{i}" for i in range(len(images))])
        return self.predict_tensors(tensors, **options)

    def __call__(self, images: Any, **options: Any) -> Any:
        single = not isinstance(images, (list, tuple))
        seq = [images] if single else list(images)
        arrays = [im if isinstance(im, np.ndarray) else read_image(im) for im in seq]
        res = self.predict_arrays(arrays, **options)
        return res[0] if single else res

    def stream(self, source: Any, *, keep_images: bool = False, vid_stride: int = 1, **options: Any) -> Iterator[Outcome]:
        """Predict every item of a source, in order, with reading/decoding overlapped with inference.

        Raises:
            SourceError: the source names nothing usable (before the first item).
        """
        opts = self.postprocess_options(**options)
        src = source if isinstance(source, Source) else Source(source, vid_stride)
        q_read: queue.Queue = queue.Queue(maxsize=2)
        q_pre: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def put(q: queue.Queue, value: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(value, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def reader() -> None:
            try:
                chunk: list[tuple[Item, str, Any]] = []
                for item in src:
                    if stop.is_set():
                        return
                    chunk.append((item, *_read(item)))
                    if len(chunk) == self.batch:
                        if not put(q_read, chunk):
                            return
                        chunk = []
                if chunk:
                    put(q_read, chunk)
            except BaseException as e:  # delivered to the caller in order
                put(q_read, e)
            finally:
                put(q_read, _END)

        def preprocessor() -> None:
            try:
                while not stop.is_set():
                    chunk = q_read.get()
                    if chunk is _END or isinstance(chunk, BaseException):
                        put(q_pre, chunk)
                        return
                    t0 = time.perf_counter()
                    with self._stream_ctx(self._pre_stream):
                        names = [str(c[0].path) if c[0].path is not None else c[0].name for c in chunk]  # as read_image names them
                        tensors = self._to_tensors([c[1] for c in chunk], [c[2] for c in chunk], names)
                        ok = [i for i, t in enumerate(tensors) if not isinstance(t, BaseException)]
                        x = infos = event = None
                        if ok:
                            x, infos = self._preprocess([tensors[i] for i in ok])
                            if self.cuda:
                                event = self.torch.cuda.Event()
                                event.record(self._pre_stream)
                    dt = (time.perf_counter() - t0) / max(len(chunk), 1)
                    self.times.decode.append(dt)
                    images = [t if keep_images else None for t in tensors]
                    put(q_pre, (chunk, tensors, ok, x, infos, event, images))
            except BaseException as e:
                put(q_pre, e)
            finally:
                put(q_pre, _END)

        threads = [threading.Thread(target=reader, name="unideploy-gpu-read", daemon=True),
                   threading.Thread(target=preprocessor, name="unideploy-gpu-pre", daemon=True)]
        for t in threads:
            t.start()
        try:
            while True:
                got = q_pre.get()
                if got is _END:
                    break
                if isinstance(got, BaseException):
                    raise got
                chunk, tensors, ok, x, infos, event, images = got
                results: dict[int, Detections] = {}
                if ok:
                    t0 = time.perf_counter()
                    with self._stream_ctx(self._inf_stream):
                        if event is not None:
                            self._inf_stream.wait_event(event)
                            x.record_stream(self._inf_stream)
                        dets = self._infer_post(x, infos, opts)
                    per = (time.perf_counter() - t0) / len(ok)
                    self.times.inference.append(per)
                    results = dict(zip(ok, dets))
                for i, (item, kind, payload) in enumerate(chunk):
                    if i in results:
                        img = None
                        if keep_images and images[i] is not None:
                            img = np.ascontiguousarray(images[i].cpu().numpy().transpose(1, 2, 0)[..., ::-1])
                        yield Outcome(item, results[i], image=img)
                    else:
                        err = tensors[i] if isinstance(tensors[i], UnideployError) else payload
                        yield Outcome(item, error=err)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5)

    def predict_files(self, paths: Sequence[Any], **options: Any) -> list[Outcome]:
        """All outcomes for a list of image files (a convenience over :meth:`stream`)."""
        return list(self.stream([str(p) for p in paths], **options))
