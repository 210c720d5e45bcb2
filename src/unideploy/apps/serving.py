"""HTTP detection endpoint on Ray Serve: images in (multipart or base64 JSON), detections out as JSON.

Endpoints (one deployment, ``route_prefix="/"``):

* ``POST /predict`` (or ``POST /``): the body is
  - ``multipart/form-data`` with one or more file parts (any field name), or
  - ``application/json`` ``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}`` (a ``data:`` URL prefix
    is accepted), or
  - a raw ``image/*`` / ``application/octet-stream`` body (one image).
  Optional query or JSON fields ``conf``, ``iou``, ``max_det`` override the server's thresholds.
  Reply: ``{"model", "results": [{"name", "image_shape", "detections": [{"xyxy", "confidence", "class_id",
  "name"}]}]}``.
* ``GET /health``: ``{"status": "ok"}``; ``GET /``: model, classes, input size, limits.

Concurrent requests are batched by ``serve.batch`` (up to ``max_batch_size`` images, waiting at most
``batch_wait_s``). Bad input is a 4xx with ``{"error": "<one line>"}``: 413 for an upload over the size limit
or too many images, 415 for an unsupported content type, 400 for a body that is not valid multipart / JSON /
base64 or an image that cannot be decoded (the message names the part), 404 / 405 for other routes/methods.

Two deployments: ``unideploy-http`` (one ingress replica, no CPU reserved) reads and checks each request and
calls ``unideploy`` (``num_replicas`` model replicas, each with one predictor). The queue is bounded: the
ingress holds at most ``max_queue`` x replicas requests in flight; one more is answered at once, before its body
is read, with 503 and a ``Retry-After`` header (seconds: the requests ahead times the recent time per request,
shared over the replicas, at least 1), so an overloaded server sheds load instead of growing its memory and
latency. A model replica that dies (killed, out of memory, a native crash) fails the calls it held; the ingress
sends each again (Ray Serve routes it to a live replica, and replaces the dead one) up to ``REPLICA_RETRIES``
times, then answers 503 with a one-line JSON error; no request is left without an answer
(``benchmarks/serve_faults.py``).

Example:
    >>> from unideploy.apps.serving import serve_model
    >>> serve_model("model.onnx", port=8000, max_upload_mb=10)  # doctest: +SKIP
    $ curl -F file=@bus.jpg http://127.0.0.1:8000/predict
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import os
import time
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

from unideploy.core.errors import InputError, RequestError, UnideployError

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_IMAGES = 16
DEFAULT_MAX_QUEUE = 64
#: times a call is sent again when the model replica holding it died (then 503 with a JSON error)
REPLICA_RETRIES = 2
#: how segmentation answers write masks (``?masks=``): COCO RLE (default), pixel outline polygons, or left out
MASK_FORMATS = ("rle", "polygon", "none")


def _b64(s: Any, what: str) -> bytes:
    if not isinstance(s, str) or not s:
        raise RequestError(400, f"{what}: expected a base64 string, got {type(s).__name__}")
    if s.startswith("data:"):
        s = s.split(",", 1)[-1]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{what}: expected base64 data, it is not valid base64") from None


def parse_upload(
    content_type: str, body: bytes, max_images: int = DEFAULT_MAX_IMAGES
) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """Split a request body into ``[(name, encoded image bytes)]`` plus JSON options (conf, iou, max_det).

    Raises:
        RequestError: 415 for an unsupported content type; 400 for a malformed body or no image; 413 for more
            than ``max_images`` images.

    Example:
        >>> parse_upload("application/json", b'{"image": "aGk="}')[0]
        [('image0', b'hi')]
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    options: dict[str, Any] = {}
    images: list[tuple[str, bytes]] = []
    if ctype == "multipart/form-data":
        if "boundary=" not in content_type:
            raise RequestError(400, "multipart/form-data body without a boundary in its Content-Type")
        msg = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        if not msg.is_multipart():
            raise RequestError(400, "expected a multipart/form-data body, it could not be parsed")
        for k, part in enumerate(msg.iter_parts()):
            name = (
                part.get_param("filename", header="content-disposition")
                or part.get_param("name", header="content-disposition")
                or f"part{k}"
            )
            data = part.get_payload(decode=True) or b""
            field = part.get_param("name", header="content-disposition")
            if field in ("conf", "iou", "max_det") and not part.get_param("filename", header="content-disposition"):
                options[field] = data.decode("utf-8", "replace").strip()
                continue
            images.append((str(name), data))
    elif ctype == "application/json":
        try:
            doc = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"expected a JSON body, could not parse it ({e})") from None
        if not isinstance(doc, dict) or not ("image" in doc or "images" in doc):
            raise RequestError(400, 'expected a JSON object with "image": <base64> or "images": [<base64>, ...]')
        if "image" in doc:
            images.append(("image0", _b64(doc["image"], "image")))
        if "images" in doc:
            if not isinstance(doc["images"], list):
                raise RequestError(
                    400, f'"images" must be a list of base64 strings, got {type(doc["images"]).__name__}'
                )
            for k, s in enumerate(doc["images"]):
                images.append((f"images[{k}]", _b64(s, f"images[{k}]")))
        options = {k: doc[k] for k in ("conf", "iou", "max_det") if k in doc}
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        images.append(("body", body))
    else:
        raise RequestError(
            415,
            f"unsupported Content-Type {ctype or 'none'!r}; use multipart/form-data, "
            f"application/json (base64) or image/*",
        )
    if not images:
        raise RequestError(400, "the request holds no image")
    if len(images) > max_images:
        raise RequestError(413, f"at most {max_images} images per request, got {len(images)}")
    return images, options


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate per-request thresholds; raises RequestError(400) naming the bad one."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if k == "masks":  # how a segmentation answer writes its masks
            if v not in MASK_FORMATS:
                raise RequestError(400, f"masks must be one of {', '.join(MASK_FORMATS)}, got {v!r}")
            out[k] = v
            continue
        try:
            out[k] = int(v) if k == "max_det" else float(v)
        except (TypeError, ValueError):
            raise RequestError(400, f"{k} must be a number, got {v!r}") from None
        if k in ("conf", "iou") and not 0.0 <= out[k] <= 1.0:
            raise RequestError(400, f"{k} must be between 0 and 1, got {v!r}")
        if k == "max_det" and out[k] < 1:
            raise RequestError(400, f"max_det must be a positive integer, got {v!r}")
    return out


def file_signature(path: str | os.PathLike) -> tuple | None:
    """(size, mtime_ns, inode) of a model file and, for an OpenVINO ``.xml``, of its ``.bin``; None if missing."""
    sig: list[int] = []
    for p in (Path(path), Path(path).with_suffix(".bin")):
        if p == Path(path) or p.suffix.lower() == ".bin" and Path(path).suffix.lower() == ".xml":
            try:
                st = p.stat()
            except OSError:
                return None
            sig += [st.st_size, st.st_mtime_ns, st.st_ino]
    return tuple(sig)


def result_json(name: str, det: Any, masks: str = "rle") -> dict[str, Any]:
    from unideploy.core.results import Segmentations

    return {
        "name": name,
        "image_shape": list(det.image_shape) if det.image_shape else None,
        "detections": det.to_dicts(masks=masks) if isinstance(det, Segmentations) else det.to_dicts(),
    }


def build_app(
    model: str | os.PathLike,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_batch_size: int = 8,
    batch_wait_s: float = 0.01,
    max_queue: int = DEFAULT_MAX_QUEUE,
    num_replicas: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    reload_check_s: float = 0,
    **load_kwargs: Any,
) -> Any:
    """A Ray Serve application (bound deployment) serving ``model``; pass it to ``serve.run``.

    Args:
        model: model path (readable where the replicas run).
        max_upload_mb: request bodies above this are refused with 413 (checked on Content-Length and while reading).
        max_images: images per request.
        max_batch_size, batch_wait_s: dynamic batching of concurrent requests.
        max_queue: requests a replica holds in flight; beyond it, 503 with ``Retry-After``.
        num_replicas, num_cpus, num_gpus: replicas and the resources of each.
        reload_check_s: when > 0, each replica looks at the model file (size, mtime, inode) at most this often
            while it serves; a changed file is opened again and used, or refused (not a valid model, or not the
            pinned ``sha256``) with the old model kept and the reason shown by ``GET /`` (``reload_error``).
            Requests in flight finish on the model they started with. 0 (default): the file is read once.
        **load_kwargs: for :func:`unideploy.load` (conf, iou, backend, device, threads, ...).

    Example:
        >>> from ray import serve
        >>> serve.run(build_app("model.onnx", max_upload_mb=5), route_prefix="/")  # doctest: +SKIP
    """
    from unideploy.apps.distributed import require_ray

    model = str(Path(model).resolve())
    if load_kwargs.get("sha256"):  # checked first, with a one-line error, not in a replica that never comes up
        from unideploy.core.security import verify_sha256

        verify_sha256(model, load_kwargs["sha256"])
    require_ray()
    if int(max_queue) < 1:
        raise InputError(f"max_queue must be a positive number of requests, got {max_queue}")
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    limit = int(max_upload_mb * 1024 * 1024)
    if num_cpus and "threads" not in load_kwargs and not num_gpus:
        load_kwargs["threads"] = max(1, int(num_cpus))

    class DetectionServer:
        """The model replica: one predictor, images batched across concurrent requests by ``serve.batch``."""

        def __init__(self) -> None:
            from unideploy.runtime.load import load

            self.loaded_sig = file_signature(model)  # before reading it: a change meanwhile is seen later
            self.predictor = load(model, **load_kwargs)
            self.checked = time.monotonic()
            self.refused_sig: Any = None
            self.reload_error: str | None = None
            self.reloads = 0
            self.reloading = False
            self.predict_batch.set_max_batch_size(int(max_batch_size))
            self.predict_batch.set_batch_wait_timeout_s(float(batch_wait_s))

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def predict_batch(self, jobs: list[tuple[Any, dict]]) -> list[Any]:
            # one runtime call per group of requests with the same thresholds
            groups: dict[str, list[int]] = {}
            for k, (_, opts) in enumerate(jobs):
                groups.setdefault(json.dumps(opts, sort_keys=True), []).append(k)
            res: dict[int, Any] = {}
            for key, idx in groups.items():
                for k, r in zip(idx, self.predictor.predict_arrays([jobs[k][0] for k in idx], **json.loads(key))):
                    res[k] = r
            return [res[k] for k in range(len(jobs))]

        async def predict(self, images: list[tuple[str, bytes]], opts: dict[str, Any]) -> dict[str, Any]:
            """Decode and predict one request's images: ``{"results": [...]}`` or ``{"error", "status"}``."""
            import asyncio

            from unideploy.core.errors import ImageDecodeError
            from unideploy.core.sources import decode_image

            await self.check_model()
            arrays = []
            for name, data in images:
                try:
                    arrays.append(decode_image(data, name))
                except ImageDecodeError as e:
                    return {"error": str(e), "status": 400}
            opts = dict(opts)
            masks = opts.pop("masks", "rle")
            results = await asyncio.gather(*[self.predict_batch((a, opts)) for a in arrays])
            return {"results": [result_json(n, r, masks) for (n, _), r in zip(images, results)]}

        async def check_model(self) -> None:
            """With ``reload_check_s``: at most that often, see whether the model file changed on disk; if so, open
            it again (in a thread, while this replica goes on answering with the loaded model) and swap it in, or,
            when it is not a valid model or fails its pinned digest, keep the loaded one and report why."""
            if reload_check_s <= 0 or self.reloading or time.monotonic() - self.checked < reload_check_s:
                return
            self.checked = time.monotonic()
            sig = file_signature(model)
            if sig in (self.loaded_sig, self.refused_sig):
                return
            self.reloading = True
            try:
                new = await asyncio.to_thread(self.predictor.reopen)
            except UnideployError as e:
                self.refused_sig, self.reload_error = sig, f"kept the model loaded before: {e}"
            else:
                # batches run on this event loop, so none is using the old predictor at this point
                old, self.predictor = self.predictor, new
                self.loaded_sig, self.refused_sig, self.reload_error = sig, None, None
                self.reloads += 1
                old.close()
            finally:
                self.reloading = False

        async def info(self) -> dict[str, Any]:
            await self.check_model()
            p = self.predictor
            return {"model": p.path.name, "task": p.task, "imgsz": list(p.spec.imgsz or ()), "names": p.names,
                    "backend": p.backend_name, "reloads": self.reloads, "reload_error": self.reload_error}

    class Ingress:
        """HTTP front: reads and checks the request, bounds the requests in flight, and calls a model replica.

        A replica that dies while it holds a request (killed, out of memory, a native crash) fails that call with
        a Ray actor error; the call is idempotent, so it is sent again (Ray Serve routes it to a live replica)
        up to ``REPLICA_RETRIES`` times, then answered with 503 and a one-line JSON error instead of Ray's
        plain-text 500.
        """

        def __init__(self, server: Any) -> None:
            self.server = server
            self.in_flight = 0  # admitted requests; the ingress's event loop is single-threaded
            self.s_per_request = 0.05  # running estimate for Retry-After
            self.replica_retries = 0  # calls sent again after a replica was lost

        async def call_model(self, method: str, *args: Any) -> Any:
            import ray.exceptions as rex

            lost = (rex.RayActorError, getattr(rex, "ActorUnavailableError", rex.RayActorError))  # the latter: Ray >= 2.30
            for attempt in range(REPLICA_RETRIES + 1):
                try:
                    return await getattr(self.server, method).remote(*args)
                except lost as e:
                    if attempt == REPLICA_RETRIES:
                        raise RequestError(503, f"model replica lost ({type(e).__name__}) and the retries "
                                                f"failed too; retry later") from None
                    self.replica_retries += 1
                    await asyncio.sleep(0.05 * (attempt + 1))
            raise AssertionError("unreachable")

        def busy(self) -> JSONResponse | None:
            if self.in_flight < limit_queue:
                return None
            retry = max(1, math.ceil(self.in_flight * self.s_per_request / max(1, int(num_replicas))))
            return JSONResponse(
                {"error": f"server busy: {self.in_flight} requests in flight (limit {limit_queue}); "
                          f"retry after {retry} s"},
                status_code=503,
                headers={"Retry-After": str(retry)},
            )

        async def __call__(self, request: Request) -> JSONResponse:
            path, root = request.url.path, request.scope.get("root_path", "").rstrip("/")
            path = (path[len(root):] if root and path.startswith(root) else path).rstrip("/") or "/"  # under route_prefix
            try:
                if request.method == "GET":
                    if path == "/health":
                        return JSONResponse({"status": "ok"})
                    if path == "/":
                        info = await self.call_model("info")
                        return JSONResponse({**info, "max_upload_mb": max_upload_mb, "max_images": max_images,
                                             "max_batch_size": max_batch_size, "max_queue": max_queue,
                                             "replicas": int(num_replicas), "in_flight": self.in_flight,
                                             "replica_retries": self.replica_retries})
                    raise RequestError(404, f"no route GET {path}; use GET /, GET /health or POST /predict")
                if request.method != "POST":
                    raise RequestError(405, f"method {request.method} not allowed; use POST /predict")
                if path not in ("/", "/predict"):
                    raise RequestError(404, f"no route POST {path}; use POST /predict")
                shed = self.busy()
                if shed is not None:
                    return shed
            except RequestError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            self.in_flight += 1
            t0 = time.perf_counter()
            try:
                declared = request.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise RequestError(
                        413,
                        f"upload of {int(declared)} bytes is over the limit of {limit} bytes ({max_upload_mb:g} MB)",
                    )
                chunks, size = [], 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise RequestError(413, f"upload is over the limit of {limit} bytes ({max_upload_mb:g} MB)")
                    chunks.append(chunk)
                images, options = parse_upload(request.headers.get("content-type", ""), b"".join(chunks), max_images)
                options.update({k: v for k, v in request.query_params.items() if k in ("conf", "iou", "max_det", "masks")})
                opts = check_options(options)
                out = await self.call_model("predict", images, opts)
                if "error" in out:
                    raise RequestError(int(out["status"]), out["error"])
                self.s_per_request = 0.8 * self.s_per_request + 0.2 * (time.perf_counter() - t0)
                return JSONResponse({"model": model_name, "results": out["results"]})
            except RequestError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            finally:
                self.in_flight -= 1

    opts: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        opts["num_gpus"] = num_gpus
    limit_queue = int(max_queue) * max(1, int(num_replicas))
    model_name = Path(model).name
    server = serve.deployment(
        DetectionServer,
        name="unideploy",
        num_replicas=int(num_replicas),
        ray_actor_options=opts,
        max_ongoing_requests=int(max_queue) + max(16, 2 * int(max_batch_size)),
    )
    ingress = serve.deployment(
        Ingress,
        name="unideploy-http",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        # above the bound, so that the ingress itself sees (and answers 503 to) the requests it will not take
        max_ongoing_requests=limit_queue + max(16, 2 * int(max_batch_size)),
    )
    return ingress.bind(server.bind())


def serve_model(
    model: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    blocking: bool = True,
    **kwargs: Any,
) -> str:
    """Start Ray (or join ``address``), deploy ``model`` on Ray Serve at ``http://host:port/`` and, with
    ``blocking``, serve until Ctrl-C. Returns the base URL.

    Example:
        >>> url = serve_model("model.onnx", port=8011, blocking=False)  # doctest: +SKIP
    """
    from unideploy.apps.distributed import init

    app = build_app(model, **kwargs)  # checks the arguments and pinned digests before Ray starts
    init(address)
    from ray import serve

    serve.start(http_options={"host": host, "port": int(port)})
    serve.run(app, name="unideploy", route_prefix="/")
    from unideploy.apps.serving_track import build_track_app, track_kwargs  # POST /track: tracked frames, streamed

    serve.run(build_track_app(model, **track_kwargs(kwargs)), name="unideploy-track", route_prefix="/track")
    url = f"http://{host}:{port}/"
    if blocking:
        import signal
        import time

        def _stop(*_: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)  # a service manager's stop is a clean shutdown too
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            import ray

            serve.shutdown()
            ray.shutdown()
    return url


__all__ = [
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_UPLOAD_MB",
    "REPLICA_RETRIES",
    "MASK_FORMATS",
    "RequestError",
    "build_app",
    "check_options",
    "file_signature",
    "parse_upload",
    "result_json",
    "serve_model",
]
