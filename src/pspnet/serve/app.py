"""The HTTP service: ``create_app(segmenter) -> FastAPI``.

Routes: ``POST /v1/segment`` (image in, label PNG or JSON out), ``GET /v1/model``, ``GET /healthz``,
``GET /metrics`` (Prometheus text), ``GET /`` (a web page), ``GET /docs`` (OpenAPI UI).

One model instance serves every request: a ``MicroBatcher`` groups concurrent requests into
batches and runs them in one worker thread. Inputs are bounded before any work is done on them:
body bytes (413, checked from Content-Length and again while reading), decoded pixels (413) and
queued requests (503 with Retry-After), so a burst of traffic cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import warnings
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Protocol, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from pspnet.data.io import to_rgb
from pspnet.errors import PSPNetError
from pspnet.inference.segmenter import MAX_WHOLE_IMAGE_PIXELS
from pspnet.inference.visualize import label_png, overlay
from pspnet.serve.batcher import BatcherStopped, MicroBatcher, QueueFull
from pspnet.serve.metrics import Metrics

try:
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.datastructures import UploadFile
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise PSPNetError("serving needs the 'serve' extra: pip install 'pspnet[serve]'") from err

STATIC_DIR = Path(__file__).resolve().parent / "static"
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "camvid_0016E5_08059.jpg"
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
ACCEPTED = "JPEG, PNG, BMP, TIFF, WebP, GIF, PPM (any mode: grey, RGBA, palette, 16-bit become 8-bit RGB)"


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


class _Guard:
    """ASGI middleware: request metrics, and the body size limit before the endpoint sees a byte."""

    def __init__(self, app: Any, metrics: Metrics, max_bytes: int):
        self.app, self.metrics, self.max_bytes = app, metrics, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        received = 0

        async def send_tracked(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        self.metrics.in_flight += 1
        try:
            length = dict(scope.get("headers", [])).get(b"content-length")
            early: tuple[int, str] | None = None
            if length is not None and not length.strip().isdigit():
                early = (400, f"invalid Content-Length header {length.decode(errors='replace')!r}")
            elif length is not None and int(length) > self.max_bytes:
                early = (413, BodyTooLarge(self.max_bytes).detail)
            if early is not None:  # answer without reading the body at all
                await JSONResponse({"detail": early[1]}, early[0])(scope, receive, send_tracked)
                return
            await self.app(scope, receive_limited, send_tracked)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.record(scope.get("path", ""), scope.get("method", ""), status, time.perf_counter() - start)


class ImageError(HTTPException):
    """A client-side image problem (400 undecodable, 413 too many pixels) with a message naming it."""


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> 8-bit RGB PIL image; the pixel limit is checked from the header, before decoding."""
    if not data:
        raise ImageError(400, "empty body: send an image as the raw request body or as multipart field 'image'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageError(413, f"image has too many pixels: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageError(400, f"not an image PIL can decode ({len(data)} bytes starting with {data[:12]!r}); "
                              f"accepted: {ACCEPTED}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(400, f"cannot read the image: {err}") from err
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(400, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(413, f"image of {w}x{h} ({w * h / 1e6:.1f} MP) is above this server's limit of "
                              f"{max_pixels / 1e6:.1f} MP; downscale it first")
    try:
        img.load()
        return to_rgb(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(400, f"corrupt or truncated {img.format or ''} image: {err}") from err


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
               max_wait_ms: float = 5.0, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int | None = None,
               model_name: str | None = None) -> FastAPI:
    """A FastAPI app serving one ``segmenter`` (a ``pspnet.Segmenter`` or anything with ``predict_batch``).

    ``max_batch`` images at most share a forward pass (default: the segmenter's ``batch_size``),
    collected for up to ``max_wait_ms``; ``max_queue`` requests may wait before new ones get 503;
    bodies above ``max_bytes`` and images above ``max_pixels`` get 413.
    """
    mode = getattr(segmenter, "mode", "whole")
    scales = tuple(getattr(segmenter, "scales", (1.0,)))
    if max_pixels is None:
        max_pixels = int(MAX_WHOLE_IMAGE_PIXELS / max(scales) ** 2) if mode == "whole" else 100_000_000
    max_batch = max_batch or int(getattr(segmenter, "batch_size", 4))
    batcher = MicroBatcher(segmenter.predict_batch, max_batch=max_batch, max_wait=max_wait_ms / 1000,
                           max_queue=max_queue)
    metrics = Metrics()
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
    app.add_middleware(_Guard, metrics=metrics, max_bytes=max_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    model_info = {
        "name": model_name or getattr(segmenter, "name", None) or "custom",
        "num_classes": num_classes,
        "classes": [{"id": i, "name": n, "color": list(palette[i])} for i, n in enumerate(names)],
        "class_names": names,
        "palette": [list(c) for c in palette],
        "device": str(getattr(segmenter, "device", "cpu")),
        "precision": getattr(segmenter, "precision", None),
        "input": {
            "formats": ACCEPTED,
            "upload": "multipart field 'image', or the raw image bytes as the body",
            "resolution": "any; labels come back at the original resolution",
            "mode": mode, "crop": getattr(segmenter, "crop", None), "scales": list(scales),
            "flip": bool(getattr(segmenter, "flip", False)),
            "mean": _floats(getattr(segmenter, "mean", None)), "std": _floats(getattr(segmenter, "std", None)),
            "max_pixels": max_pixels, "max_bytes": max_bytes,
        },
        "output": {"png": "palette PNG, pixel value = class id (16-bit grey above 256 classes)",
                   "json": "class names, colours, pixel fractions, base64 PNGs of the labels and the overlay"},
        "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue},
    }

    @app.post("/v1/segment", openapi_extra={"requestBody": SEGMENT_BODY}, summary="Segment one image",
              responses={200: {"content": {"image/png": {}, "application/json": {}},
                               "description": "label PNG (format=png) or JSON (format=json)"},
                         400: {"description": "not a decodable image"},
                         413: {"description": "body or image too large"},
                         503: {"description": "queue full; see Retry-After"}})
    async def segment(request: Request,
                      fmt: Literal["png", "json"] = Query("png", alias="format", description="png or json"),
                      alpha: float = Query(0.5, ge=0, le=1, description="overlay opacity (json)"),
                      legend: bool = Query(False, description="draw a legend panel beside the overlay (json)")
                      ) -> Response:
        """The label map of the image: a palette PNG (pixel value = class id), or JSON with per-class
        pixel fractions and base64 PNGs of the label map and a colour overlay."""
        start = time.perf_counter()
        data, filename = await _read_upload(request)
        image = await asyncio.to_thread(decode_image, data, max_pixels)
        del data
        try:
            labels = await batcher.submit(image)
        except QueueFull as err:
            raise HTTPException(503, str(err), headers={"Retry-After": str(err.retry_after)}) from None
        except BatcherStopped as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from None
        except PSPNetError as err:
            raise HTTPException(400, str(err)) from None
        except Exception as err:  # noqa: BLE001 - the client gets the reason, the server keeps running
            raise HTTPException(500, f"inference failed: {type(err).__name__}: {err}") from None
        headers = {"X-Image-Size": f"{image.width}x{image.height}",
                   "X-Elapsed-Ms": f"{(time.perf_counter() - start) * 1000:.1f}"}
        if fmt == "png":
            png = await asyncio.to_thread(labels_to_png, labels, palette, num_classes)
            return Response(png, media_type="image/png", headers=headers)
        body = await asyncio.to_thread(_json_result, image, labels, names, palette, num_classes, alpha, legend,
                                       filename)
        return JSONResponse(body, headers=headers)

    @app.get("/v1/model", summary="Classes, palette and input handling")
    async def model() -> dict:
        return model_info

    @app.get("/v1/sample", summary="The bundled sample image (JPEG)", response_class=FileResponse)
    async def sample() -> FileResponse:
        if not SAMPLE.is_file():
            raise HTTPException(404, "no sample image in this installation")
        return FileResponse(SAMPLE, media_type="image/jpeg", filename=SAMPLE.name)

    @app.get("/healthz", summary="Liveness: 200 while the model worker is alive")
    async def healthz() -> JSONResponse:
        if batcher.failed is not None:
            return JSONResponse({"status": "error", "detail": f"batcher stopped: {batcher.failed!r}"}, 503)
        return JSONResponse({"status": "ok", "queue_depth": batcher.depth, "busy": batcher.busy})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(batcher), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app


def _json_result(image: Image.Image, labels: np.ndarray, names: list[str], palette: list, num_classes: int,
                 alpha: float, legend: bool, filename: str | None) -> dict:
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    total = int(labels.size)
    return {
        "filename": filename,
        "width": image.width,
        "height": image.height,
        "classes": [{"id": i, "name": names[i], "color": list(palette[i]), "pixels": int(counts[i]),
                     "fraction": float(counts[i]) / total} for i in range(num_classes)],
        "labels_png_base64": base64.b64encode(labels_to_png(labels, palette, num_classes)).decode("ascii"),
        "overlay_png_base64": _png_b64(overlay(image, labels, palette, names, alpha, legend)),
    }


def _floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    return [round(float(v), 6) for v in np.asarray(value).ravel()]


def _version() -> str:
    from pspnet.version import __version__

    return __version__
