"""``pspnet serve``: the segmentation HTTP service (FastAPI + uvicorn) for one model."""

from __future__ import annotations

import argparse
import logging

from pspnet.cli.options import add_segmenter, segmenter_kwargs
from pspnet.errors import PSPNetError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP service: POST /v1/segment, web page at /",
                       description="Serve one model over HTTP: POST /v1/segment (label PNG or JSON), GET /v1/model, "
                                   "/healthz, /metrics (Prometheus), a web page at / and OpenAPI docs at /docs. "
                                   "Concurrent requests are micro-batched on one model instance; memory is bounded "
                                   "by the pixel budget (see docs/serve.md).")
    add_segmenter(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first request of a batch waits for others")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; beyond this: 503")
    p.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024, help="largest request body")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest image in pixels")
    p.add_argument("--max-inflight-pixels", type=int,
                   help="pixels of all images being handled at once; beyond this: 503")
    p.add_argument("--max-inflight-bytes", type=int,
                   help="bytes of all request bodies being handled at once; beyond this: 503")
    p.add_argument("--work-pixels", type=int,
                   help="larger images are downscaled to this many pixels for the model")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections; more are closed on accept")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send request headers")
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds a request may take to send its body; then 408")
    p.add_argument("--keep-alive", type=int, default=5, help="seconds an idle kept-alive connection stays open")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - checked here so the error names the extra
    except ImportError as err:
        raise PSPNetError("pspnet serve needs the 'serve' extra: pip install 'pspnet[serve]'") from err
    from pspnet.device import resolve_device
    from pspnet.inference.batch import validate_numbers
    from pspnet.inference.predict import check_mode
    from pspnet.inference.segmenter import Segmenter
    from pspnet.serve.app import create_app
    from pspnet.serve.server import run_server

    validate_numbers(args.scales, batch_size=args.batch_size, crop=args.crop)
    check_mode(args.mode, args.crop)
    limits = [("--max-connections", args.max_connections), ("--header-timeout", args.header_timeout),
              ("--body-timeout", args.body_timeout), ("--keep-alive", args.keep_alive),
              ("--max-queue", args.max_queue), ("--max-bytes", args.max_bytes), ("--max-pixels", args.max_pixels),
              ("--max-inflight-pixels", args.max_inflight_pixels), ("--max-inflight-bytes", args.max_inflight_bytes),
              ("--work-pixels", args.work_pixels)]
    for flag, value in limits:
        if value is not None and not value > 0:  # "not >" also refuses nan
            raise PSPNetError(f"{flag} must be positive, got {value}")
    for flag, value in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if value == float("inf"):
            raise PSPNetError(f"{flag} must be a finite number of seconds, got {value}")
    if not 0 <= args.max_wait_ms < float("inf"):
        raise PSPNetError(f"--max-wait-ms must be a finite number >= 0, got {args.max_wait_ms}")
    if not 0 <= args.port <= 65535:
        raise PSPNetError(f"--port {args.port}: must be between 0 and 65535")
    resolve_device(args.device)  # a bad --device is one line, before any model loads
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    segmenter = Segmenter(**segmenter_kwargs(args))
    app = create_app(segmenter, max_queue=args.max_queue, max_batch=args.batch_size, max_wait_ms=args.max_wait_ms,
                     max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                     max_inflight_pixels=args.max_inflight_pixels, max_inflight_bytes=args.max_inflight_bytes,
                     work_pixels=args.work_pixels,
                     body_timeout=args.body_timeout, model_name=str(args.model))
    run_server(app, host=args.host, port=args.port, max_connections=args.max_connections,
               header_timeout=args.header_timeout, keep_alive=args.keep_alive, log_level=args.log_level)
    return 0
