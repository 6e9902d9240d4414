"""``pspnet serve``: the segmentation HTTP service (FastAPI + uvicorn) for one model."""

from __future__ import annotations

import argparse
import logging

from pspnet.cli.options import model_for_backend
from pspnet.errors import PSPNetError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP service: POST /v1/segment, web page at /",
                       description="Serve one model over HTTP: POST /v1/segment (label PNG or JSON), GET /v1/model, "
                                   "/healthz, /metrics (Prometheus), a web page at / and OpenAPI docs at /docs. "
                                   "Concurrent requests are micro-batched on one model instance; memory is bounded "
                                   "by the pixel budget (see docs/serve.md).")
    p.add_argument("--model", default="camvid", help="bundled name (camvid), .safetensors/.pth/.onnx file, folder or Hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--mode", default="whole", choices=["whole", "slide"], help="slide: sliding window for large images")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="sliding-window crop size")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale testing, e.g. 0.75 1 1.25")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--batch-size", type=int, default=4, help="most images in one forward pass (default 4)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first request of a batch waits for others (default 5 ms)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; beyond this: 503 (default 64)")
    p.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024, help="largest request body (default 20 MiB)")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest image in pixels (default 16 MP)")
    p.add_argument("--max-inflight-pixels", type=int,
                   help="pixels of all images being handled at once; beyond this: 503 (default 5x --max-pixels)")
    p.add_argument("--max-inflight-bytes", type=int,
                   help="bytes of all request bodies being handled at once; beyond this: 503 (default 4x --max-bytes)")
    p.add_argument("--work-pixels", type=int,
                   help="larger images are downscaled to this many pixels for the model (default 0.5 MP / max scale^2)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections; more are closed on accept (default 256)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send request headers (default 10)")
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds a request may take to send its body; then 408 (default 60)")
    p.add_argument("--keep-alive", type=int, default=5, help="seconds an idle kept-alive connection stays open")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - checked here so the error names the extra
    except ImportError as err:
        raise PSPNetError("pspnet serve needs the 'serve' extra: pip install 'pspnet[serve]'") from err
    from pspnet.inference.segmenter import Segmenter
    from pspnet.serve.app import create_app
    from pspnet.serve.server import run_server

    for flag, value in (("--max-connections", args.max_connections), ("--header-timeout", args.header_timeout),
                        ("--body-timeout", args.body_timeout), ("--keep-alive", args.keep_alive)):
        if value <= 0:
            raise PSPNetError(f"{flag} must be positive, got {value}")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    model = model_for_backend(args.model, args.backend)
    segmenter = Segmenter(model, device=args.device, precision=args.precision, mode=args.mode, crop=args.crop,
                          scales=args.scales, flip=args.flip, backend=args.backend, batch_size=args.batch_size)
    app = create_app(segmenter, max_queue=args.max_queue, max_batch=args.batch_size, max_wait_ms=args.max_wait_ms,
                     max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                     max_inflight_pixels=args.max_inflight_pixels, max_inflight_bytes=args.max_inflight_bytes,
                     work_pixels=args.work_pixels,
                     body_timeout=args.body_timeout, model_name=str(args.model))
    run_server(app, host=args.host, port=args.port, max_connections=args.max_connections,
               header_timeout=args.header_timeout, keep_alive=args.keep_alive, log_level=args.log_level)
    return 0
