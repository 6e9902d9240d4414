"""``pspnet serve``: the segmentation HTTP service (FastAPI + uvicorn) for one model."""

from __future__ import annotations

import argparse

from pspnet.errors import PSPNetError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP service: POST /v1/segment, web page at /",
                       description="Serve one model over HTTP: POST /v1/segment (label PNG or JSON), GET /v1/model, "
                                   "/healthz, /metrics (Prometheus), a web page at / and OpenAPI docs at /docs. "
                                   "Concurrent requests are micro-batched on one model instance.")
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
    p.add_argument("--max-pixels", type=int, help="largest image in pixels (default: the model's whole-image limit)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as err:
        raise PSPNetError("pspnet serve needs the 'serve' extra: pip install 'pspnet[serve]'") from err
    from pspnet.export.onnx import cached_onnx
    from pspnet.inference.segmenter import Segmenter
    from pspnet.serve.app import create_app

    model = cached_onnx(args.model) if args.backend == "onnxruntime" else args.model
    segmenter = Segmenter(model, device=args.device, precision=args.precision, mode=args.mode, crop=args.crop,
                          scales=args.scales, flip=args.flip, backend=args.backend, batch_size=args.batch_size)
    app = create_app(segmenter, max_queue=args.max_queue, max_batch=args.batch_size, max_wait_ms=args.max_wait_ms,
                     max_bytes=args.max_bytes, max_pixels=args.max_pixels, model_name=str(args.model))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
