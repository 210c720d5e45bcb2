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

The queue is bounded: a replica holds at most ``max_queue`` requests in flight; one more is answered at once,
before its body is read, with 503 and a ``Retry-After`` header (seconds: the requests ahead times the recent
time per image, at least 1), so an overloaded server sheds load instead of growing its memory and latency.

Example:
    >>> from unideploy.apps.serving import serve_model
    >>> serve_model("model.onnx", port=8000, max_upload_mb=10)  # doctest: +SKIP
    $ curl -F file=@bus.jpg http://127.0.0.1:8000/predict
"""

from __future__ import annotations

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

from unideploy.core.errors import InputError, RequestError

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_IMAGES = 16
DEFAULT_MAX_QUEUE = 64


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
        try:
            out[k] = int(v) if k == "max_det" else float(v)
        except (TypeError, ValueError):
            raise RequestError(400, f"{k} must be a number, got {v!r}") from None
        if k in ("conf", "iou") and not 0.0 <= out[k] <= 1.0:
            raise RequestError(400, f"{k} must be between 0 and 1, got {v!r}")
        if k == "max_det" and out[k] < 1:
            raise RequestError(400, f"max_det must be a positive integer, got {v!r}")
    return out


def result_json(name: str, det: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image_shape": list(det.image_shape) if det.image_shape else None,
        "detections": det.to_dicts(),
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
        def __init__(self) -> None:
            from unideploy.runtime.load import load

            self.predictor = load(model, **load_kwargs)
            self.in_flight = 0  # admitted requests; the replica's event loop is single-threaded
            self.s_per_image = 0.05  # running estimate for Retry-After
            self.predict_batch.set_max_batch_size(int(max_batch_size))
            self.predict_batch.set_batch_wait_timeout_s(float(batch_wait_s))

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def predict_batch(self, jobs: list[tuple[Any, dict]]) -> list[Any]:
            out: list[Any] = []
            # one runtime call per group of requests with the same thresholds
            groups: dict[str, list[int]] = {}
            for k, (_, opts) in enumerate(jobs):
                groups.setdefault(json.dumps(opts, sort_keys=True), []).append(k)
            res: dict[int, Any] = {}
            t0 = time.perf_counter()
            for key, idx in groups.items():
                for k, r in zip(idx, self.predictor.predict_arrays([jobs[k][0] for k in idx], **json.loads(key))):
                    res[k] = r
            out = [res[k] for k in range(len(jobs))]
            self.s_per_image = 0.8 * self.s_per_image + 0.2 * (time.perf_counter() - t0) / len(jobs)
            return out

        def busy(self) -> JSONResponse | None:
            if self.in_flight < max_queue:
                return None
            retry = max(1, math.ceil(self.in_flight * self.s_per_image))
            return JSONResponse(
                {"error": f"server busy: {self.in_flight} requests in flight (limit {max_queue}); "
                          f"retry after {retry} s"},
                status_code=503,
                headers={"Retry-After": str(retry)},
            )

        def info(self) -> dict[str, Any]:
            p = self.predictor
            return {
                "model": p.path.name,
                "task": p.task,
                "imgsz": list(p.spec.imgsz or ()),
                "names": p.names,
                "backend": p.backend_name,
                "max_upload_mb": max_upload_mb,
                "max_images": max_images,
                "max_batch_size": max_batch_size,
                "max_queue": max_queue,
                "in_flight": self.in_flight,
            }

        async def __call__(self, request: Request) -> JSONResponse:
            import asyncio

            from unideploy.core.errors import ImageDecodeError
            from unideploy.core.sources import decode_image

            path = request.url.path.rstrip("/") or "/"
            try:
                if request.method == "GET":
                    if path == "/health":
                        return JSONResponse({"status": "ok"})
                    if path == "/":
                        return JSONResponse(self.info())
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
                options.update({k: v for k, v in request.query_params.items() if k in ("conf", "iou", "max_det")})
                opts = check_options(options)
                arrays = []
                for name, data in images:
                    try:
                        arrays.append(decode_image(data, name))
                    except ImageDecodeError as e:
                        raise RequestError(400, str(e)) from None
                results = await asyncio.gather(*[self.predict_batch((a, opts)) for a in arrays])
                return JSONResponse(
                    {
                        "model": self.predictor.path.name,
                        "results": [result_json(n, r) for (n, _), r in zip(images, results)],
                    }
                )
            except RequestError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            finally:
                self.in_flight -= 1

    opts: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        opts["num_gpus"] = num_gpus
    dep = serve.deployment(
        DetectionServer,
        name="unideploy",
        num_replicas=int(num_replicas),
        ray_actor_options=opts,
        # above max_queue, so that the replica itself sees (and answers 503 to) the requests it will not take
        max_ongoing_requests=int(max_queue) + max(16, 2 * int(max_batch_size)),
    )
    return dep.bind()


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
