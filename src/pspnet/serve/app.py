"""The HTTP service: ``create_app(segmenter) -> FastAPI``.

Routes: ``POST /v1/segment`` (image in, label PNG or JSON out), ``GET /v1/model``, ``GET /healthz``,
``GET /metrics`` (Prometheus text), ``GET /`` (a web page), ``GET /docs`` (OpenAPI UI); HEAD
wherever GET is.

One model instance serves every request: a ``MicroBatcher`` groups concurrent requests into
batches and runs them in one worker thread. Memory is bounded by design, not by luck:

- body bytes: ``max_bytes`` per request (413, from Content-Length and again while reading) and
  ``max_inflight_bytes`` over all requests (503), read within ``body_timeout`` seconds (408), so
  stalled uploads cannot hold their buffers;
- pixels: ``max_pixels`` per image (413, from the header before decoding) and ``max_inflight_pixels``
  over all images being handled (503 with Retry-After), since a request's memory grows with its pixels;
- the model sees at most ``work_pixels`` per image (scaled by the largest test scale): larger images
  are downscaled, segmented, and their labels upsampled (nearest) to the original size, so the
  activations of a forward pass are bounded whatever the upload; ``max_batch_pixels`` bounds a batch;
- queued requests: ``max_queue`` (503 with Retry-After); a request whose client disconnects is
  dropped from the queue before it reaches the model.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Literal, Protocol, Sequence, TypeVar

import numpy as np
from PIL import Image

from pspnet.data.io import FORMATS_TEXT, ImageTooLarge, decode_rgb, open_image
from pspnet.errors import PSPNetError
from pspnet.inference.visualize import label_png, overlay
from pspnet.model.bundled import SAMPLE_IMAGE
from pspnet.serve.admission import Budget, OverBudget, byte_budget, pixel_budget
from pspnet.serve.batcher import BatcherStopped, MicroBatcher, QueueFull
from pspnet.serve.metrics import ServerMetrics

try:
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.datastructures import UploadFile
    from starlette.requests import ClientDisconnect
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise PSPNetError("serving needs the 'serve' extra: pip install 'pspnet[serve]'") from err

logger = logging.getLogger(__name__)
T = TypeVar("T")

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 16_000_000  # 4000x4000; decoding one takes 64 MB (Pillow keeps RGB in 4 bytes a pixel)
# What the model sees at scale 1: 3x the 480x360 frames the bundled model was trained on, and one
# forward pass of it takes as long as a batch of three such frames, which bounds how long a small
# request can wait behind a large one.
DEFAULT_WORK_PIXELS = 500_000
DEFAULT_MAX_BATCH_PIXELS = 700_000  # four 480x360 frames share a pass; two work-size images do not
DEFAULT_BODY_TIMEOUT = 60.0
CLIENT_CLOSED = 499  # nginx's status for "client closed the request"; recorded in /metrics, never sent
ACCEPTED = f"{FORMATS_TEXT} (any mode: grey, RGBA, palette, 16-bit become 8-bit RGB; EXIF orientation applied)"


class SegmenterLike(Protocol):
    """What the app needs from a model: ``pspnet.Segmenter`` or a test stub."""

    class_names: list[str]
    palette: list[list[int]]
    num_classes: int

    def predict_batch(self, images: Sequence[Image.Image]) -> list[np.ndarray]: ...


class BodyTooLarge(HTTPException):
    """Raised from the body reader; an HTTPException so FastAPI's form parsing passes it through as 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is above the limit of {limit} bytes ({limit / 2**20:.1f} MiB)")


class BodyTimeout(HTTPException):
    """The body did not arrive within the deadline (408): a stalled upload must not hold its buffer."""

    def __init__(self, seconds: float):
        super().__init__(408, f"request body not received within {seconds:g} s", headers={"Connection": "close"})


class _Guard:
    """ASGI middleware: request metrics, HEAD as GET without a body, the body size limit and read
    deadline before the endpoint sees a byte, and client disconnects logged in one line."""

    def __init__(self, app: Any, metrics: ServerMetrics, max_bytes: int, body_timeout: float, bodies: Budget):
        self.app, self.metrics, self.max_bytes, self.body_timeout = app, metrics, max_bytes, body_timeout
        self.bodies = bodies

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        method = scope.get("method", "")
        status = 500
        received = held = 0  # body bytes read; of them, held in the byte budget until the response
        body_done = False

        async def send_tracked(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and method == "HEAD":
                message = {**message, "body": b""}
            await send(message)

        async def receive_limited() -> dict:
            nonlocal received, held, body_done
            if body_done:  # only the disconnect notice is left to wait for: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                received += chunk
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                try:
                    self.bodies.acquire(chunk)
                except OverBudget as err:
                    raise HTTPException(503, str(err), headers={"Retry-After": "1", "Connection": "close"}) from None
                held += chunk
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        if method == "HEAD":
            scope = {**scope, "method": "GET"}
        self.metrics.in_flight += 1
        try:
            length = dict(scope.get("headers", [])).get(b"content-length")
            early: tuple[int, str] | None = None
            if length is not None and not length.strip().isdigit():
                early = (400, f"invalid Content-Length header {length.decode(errors='replace')!r}")
            elif length is not None and int(length) > self.max_bytes:
                early = (413, BodyTooLarge(self.max_bytes).detail)
            elif length is not None and self.bodies.used + int(length) > self.bodies.capacity:
                early = (503, f"server busy: {self.bodies.used / 2**20:.1f} MiB of request bodies in flight")
            if early is not None:  # answer without reading the body at all
                headers = {"Retry-After": "1"} if early[0] == 503 else None
                await JSONResponse({"detail": early[1]}, early[0], headers=headers)(scope, receive, send_tracked)
                return
            await self.app(scope, receive_limited, send_tracked)
        except ClientDisconnect:
            status = CLIENT_CLOSED
            log_disconnect(scope, start, "while sending the request")
        finally:
            self.bodies.release(held)
            self.metrics.in_flight -= 1
            self.metrics.record(scope.get("path", ""), method, status, time.perf_counter() - start)


def log_disconnect(scope: dict, start: float, when: str) -> None:
    """One log line per client that left early (not a traceback)."""
    client = scope.get("client") or ("?", 0)
    logger.info("client %s:%s disconnected %s: %s %s after %.2f s", client[0], client[1], when,
                scope.get("method", ""), scope.get("path", ""), time.perf_counter() - start)


def public_name(name: str) -> str:
    """A model name fit for responses: a local path is reduced to its file or folder name."""
    path = Path(name)
    return path.name if path.is_absolute() or path.exists() else name


def prepare(header: Image.Image, name: str, work_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode (upright, RGB) and downscale to at most ``work_pixels``; returns the image the model sees
    and the original (width, height). The full-size image is dropped here, so only one request's
    decode is ever held at full resolution per decoding thread."""
    image = decode_rgb(header, name)
    size = image.size
    w, h = size
    if w * h > work_pixels:
        factor = (work_pixels / (w * h)) ** 0.5
        target = (max(1, int(w * factor)), max(1, int(h * factor)))
        image = image.resize(target, Image.BILINEAR, reducing_gap=3.0)
    return image, size


def upsample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour labels at ``size`` (width, height): memory is the output map alone."""
    if (labels.shape[1], labels.shape[0]) == size:
        return labels
    return np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))


async def until_disconnected(request: Request) -> None:
    """Return when the client has gone (the body has been read, so only http.disconnect is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Await ``work`` unless the client leaves first; then ``work`` is cancelled: (left, result)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return False, task.result()
    task.cancel()
    return True, None


def labels_to_png(labels: np.ndarray, palette: Sequence[Sequence[int]], num_classes: int) -> bytes:
    """Palette PNG of class indices (16-bit grey when there are more than 256 classes)."""
    img = label_png(labels, palette) if num_classes <= 256 else Image.fromarray(labels.astype(np.uint16))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return base64.b64encode(buf.getvalue()).decode("ascii")


async def _read_upload(request: Request) -> tuple[bytes, str | None]:
    """The image bytes from a multipart upload (field 'image', 'file' or the first file) or the raw body."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return await request.body(), None
    async with request.form(max_files=4, max_fields=16) as form:
        upload = form.get("image") or form.get("file")
        if not isinstance(upload, UploadFile):
            upload = next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise HTTPException(400, "multipart body has no file: send the image in a field named 'image'")
        return await upload.read(), upload.filename


SEGMENT_BODY = {
    "required": True,
    "description": "The image: a multipart upload (field `image`) or the raw bytes as the body.",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def create_app(segmenter: SegmenterLike, *, max_queue: int = 64, max_batch: int | None = None,
               max_wait_ms: float = 5.0, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_inflight_pixels: int | None = None, max_inflight_bytes: int | None = None,
               work_pixels: int | None = None,
               max_batch_pixels: int | None = None, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               model_name: str | None = None) -> FastAPI:
    """A FastAPI app serving one ``segmenter`` (a ``pspnet.Segmenter`` or anything with ``predict_batch``).

    ``max_batch`` images at most share a forward pass (default: the segmenter's ``batch_size``),
    collected for up to ``max_wait_ms``; ``max_queue`` requests may wait before new ones get 503.
    Bodies above ``max_bytes`` and images above ``max_pixels`` get 413, bodies slower than
    ``body_timeout`` seconds 408; beyond ``max_inflight_pixels`` (default: five maximum-size images)
    requests get 503, and so they do beyond ``max_inflight_bytes`` of bodies (default 4 * ``max_bytes``;
    a body is held until its response). The model sees at most ``work_pixels`` per image (default 0.5 MP) and
    ``max_batch_pixels`` per batch (default 0.7 MP), both divided by the square of the largest test scale.
    """
    mode = getattr(segmenter, "mode", "whole")
    scales = tuple(getattr(segmenter, "scales", (1.0,)))
    work_pixels = work_pixels or int(DEFAULT_WORK_PIXELS / max(scales) ** 2)
    max_batch_pixels = max_batch_pixels or max(work_pixels, int(DEFAULT_MAX_BATCH_PIXELS / max(scales) ** 2))
    max_inflight_pixels = max_inflight_pixels or 5 * max_pixels
    for key, value in (("max_pixels", max_pixels), ("work_pixels", work_pixels), ("max_bytes", max_bytes),
                       ("max_inflight_pixels", max_inflight_pixels), ("max_batch_pixels", max_batch_pixels)):
        if value < 1:
            raise PSPNetError(f"{key} must be at least 1, got {value}")
    if max_inflight_bytes is not None and max_inflight_bytes < max_bytes:
        raise PSPNetError(f"max_inflight_bytes ({max_inflight_bytes}) must be at least max_bytes ({max_bytes})")
    if max_inflight_pixels < max_pixels:
        raise PSPNetError(f"max_inflight_pixels ({max_inflight_pixels}) must be at least max_pixels ({max_pixels}), "
                          "or the largest allowed image could never be admitted")
    if body_timeout <= 0:
        raise PSPNetError(f"body_timeout must be positive, got {body_timeout}")
    max_batch = max_batch or int(getattr(segmenter, "batch_size", 4))
    batcher = MicroBatcher(segmenter.predict_batch, max_batch=max_batch, max_wait=max_wait_ms / 1000,
                           max_queue=max_queue, max_batch_cost=max_batch_pixels, group=lambda image: image.size)
    admission = pixel_budget(max_inflight_pixels)
    bodies = byte_budget(max_inflight_bytes or 4 * max_bytes)
    metrics = ServerMetrics()
    names, palette, num_classes = list(segmenter.class_names), list(segmenter.palette), int(segmenter.num_classes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="PSPNet segmentation service", version=_version(), lifespan=lifespan,
                  description="Semantic segmentation with PSPNet. Upload an image to `POST /v1/segment`; "
                              "the web page at `/` does the same interactively.")
    app.state.segmenter, app.state.batcher, app.state.metrics = segmenter, batcher, metrics
    app.state.admission, app.state.bodies = admission, bodies
    app.add_middleware(_Guard, metrics=metrics, max_bytes=max_bytes, body_timeout=body_timeout, bodies=bodies)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    model_info = {
        "name": public_name(model_name or getattr(segmenter, "name", None) or "custom"),
        "num_classes": num_classes,
        "classes": [{"id": i, "name": n, "color": list(palette[i])} for i, n in enumerate(names)],
        "class_names": names,
        "palette": [list(c) for c in palette],
        "device": str(getattr(segmenter, "device", "cpu")),
        "precision": getattr(segmenter, "precision", None),
        "int8_layers": list(getattr(segmenter, "int8_layers", [])),  # convs that run in int8 (precision auto)
        "eval_scale": getattr(segmenter, "eval_scale", None),  # frames are enlarged by this before the network
        "input": {
            "formats": ACCEPTED,
            "upload": "multipart field 'image', or the raw image bytes as the body",
            "resolution": "any up to max_pixels; above work_pixels the model sees the image downscaled to "
                          "work_pixels; labels come back at the original resolution",
            "mode": mode, "crop": getattr(segmenter, "crop", None), "scales": list(scales),
            "flip": bool(getattr(segmenter, "flip", False)),
            "mean": _floats(getattr(segmenter, "mean", None)), "std": _floats(getattr(segmenter, "std", None)),
            "max_pixels": max_pixels, "max_bytes": max_bytes, "work_pixels": work_pixels,
            "body_timeout_s": body_timeout,
        },
        "output": {"png": "palette PNG, pixel value = class id (16-bit grey above 256 classes)",
                   "json": "class names, colours, pixel fractions, base64 PNGs of the labels (original size) "
                           "and the overlay (at most work_pixels)"},
        "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue,
                     "max_batch_pixels": max_batch_pixels, "max_inflight_pixels": max_inflight_pixels,
                     "max_inflight_bytes": bodies.capacity},
    }

    @app.post("/v1/segment", openapi_extra={"requestBody": SEGMENT_BODY}, summary="Segment one image",
              responses={200: {"content": {"image/png": {}, "application/json": {}},
                               "description": "label PNG (format=png) or JSON (format=json)"},
                         400: {"description": "not a decodable image in an accepted format"},
                         408: {"description": "body not received in time"},
                         413: {"description": "body or image too large"},
                         503: {"description": "queue or pixel budget full; see Retry-After"}})
    async def segment(request: Request,
                      fmt: Literal["png", "json"] = Query("png", alias="format", description="png or json"),
                      alpha: float = Query(0.5, ge=0, le=1, description="overlay opacity (json)"),
                      legend: bool = Query(False, description="draw a legend panel beside the overlay (json)")
                      ) -> Response:
        """The label map of the image: a palette PNG (pixel value = class id), or JSON with per-class
        pixel fractions and base64 PNGs of the label map and a colour overlay."""
        start = time.perf_counter()
        data, filename = await _read_upload(request)
        if not data:
            raise HTTPException(400, "empty body: send an image as the raw request body or as multipart field 'image'")
        name = filename or "request body"
        try:
            header = await asyncio.to_thread(open_image, data, False, name=name, max_pixels=max_pixels)
        except ImageTooLarge as err:
            raise HTTPException(413, str(err)) from None
        except PSPNetError as err:
            raise HTTPException(400, str(err)) from None
        del data
        pixels = header.width * header.height
        try:
            admission.acquire(pixels)
        except OverBudget as err:
            raise HTTPException(503, str(err), headers={"Retry-After": str(batcher.retry_after())}) from None
        try:
            try:
                image, size = await asyncio.to_thread(prepare, header, name, work_pixels)
            except PSPNetError as err:
                raise HTTPException(400, str(err)) from None
            del header
            try:
                left, labels = await unless_disconnected(
                    request, batcher.submit(image, cost=image.width * image.height))
            except QueueFull as err:
                raise HTTPException(503, str(err), headers={"Retry-After": str(err.retry_after)}) from None
            except BatcherStopped as err:
                raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from None
            except PSPNetError as err:
                raise HTTPException(400, str(err)) from None
            except Exception as err:  # noqa: BLE001 - the client gets the reason, the server keeps running
                raise HTTPException(500, f"inference failed: {type(err).__name__}: {err}") from None
            if left:
                log_disconnect(request.scope, start, "before its result")
                return Response(status_code=CLIENT_CLOSED)
            assert labels is not None
            headers = {"X-Image-Size": f"{size[0]}x{size[1]}",
                       "X-Elapsed-Ms": f"{(time.perf_counter() - start) * 1000:.1f}"}
            if fmt == "png":
                png = await asyncio.to_thread(_png_result, labels, size, palette, num_classes)
                return Response(png, media_type="image/png", headers=headers)
            body = await asyncio.to_thread(_json_result, image, labels, size, names, palette, num_classes, alpha,
                                           legend, filename)
            return JSONResponse(body, headers=headers)
        finally:
            admission.release(pixels)

    @app.get("/v1/model", summary="Classes, palette and input handling")
    async def model() -> dict:
        return model_info

    @app.get("/v1/sample", summary="The bundled sample image (JPEG)", response_class=FileResponse)
    async def sample() -> FileResponse:
        if not SAMPLE_IMAGE.is_file():
            raise HTTPException(404, "no sample image in this installation")
        return FileResponse(SAMPLE_IMAGE, media_type="image/jpeg", filename=SAMPLE_IMAGE.name)

    @app.get("/healthz", summary="Liveness: 200 while the model worker is alive")
    async def healthz() -> JSONResponse:
        if batcher.failed is not None:
            return JSONResponse({"status": "error", "detail": f"batcher stopped: {batcher.failed!r}"}, 503)
        return JSONResponse({"status": "ok", "queue_depth": batcher.depth, "busy": batcher.busy})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(batcher, admission, bodies),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app


def _png_result(labels: np.ndarray, size: tuple[int, int], palette: list, num_classes: int) -> bytes:
    return labels_to_png(upsample_labels(labels, size), palette, num_classes)


def _json_result(image: Image.Image, labels: np.ndarray, size: tuple[int, int], names: list[str], palette: list,
                 num_classes: int, alpha: float, legend: bool, filename: str | None) -> dict:
    """Fractions and the label PNG at the original ``size``; the overlay at the size the model saw."""
    full = upsample_labels(labels, size)
    counts = np.bincount(full.ravel(), minlength=num_classes)
    total = int(full.size)
    return {
        "filename": filename,
        "width": size[0],
        "height": size[1],
        "classes": [{"id": i, "name": names[i], "color": list(palette[i]), "pixels": int(counts[i]),
                     "fraction": float(counts[i]) / total} for i in range(num_classes)],
        "labels_png_base64": base64.b64encode(labels_to_png(full, palette, num_classes)).decode("ascii"),
        "overlay_png_base64": _png_b64(overlay(image, labels, palette, names, alpha, legend)),
    }


def _floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    return [round(float(v), 6) for v in np.asarray(value).ravel()]


def _version() -> str:
    from pspnet.version import __version__

    return __version__
