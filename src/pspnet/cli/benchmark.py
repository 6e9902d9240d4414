"""``pspnet benchmark``: fast paths, ONNX Runtime, int8, the bundled model and extra cases in one interleaved run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pspnet.cli.options import add_device

if TYPE_CHECKING:
    from pspnet.benchmark import BenchConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="time every inference path against fp32 eager (and peer models, --cases)",
                       description="One interleaved run on the same frame: median latency and spread, images/s, "
                                   "GFLOP, achieved GFLOP/s vs the measured matmul peak, peak memory, argmax agreement "
                                   "with fp32; then a training step, size/batch scaling and a sliding-window run.")
    p.add_argument("--model", default="pspnet_resnet50", help="create_model name, random init")
    p.add_argument("--num-classes", type=int, default=21, help="classes of the --model")
    p.add_argument("--size", type=int, nargs=2, default=[473, 473], metavar=("H", "W"), help="input size")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per path")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    add_device(p, default="cpu")
    p.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: torch's, one per core)")
    p.add_argument("--peak-seconds", type=float, default=1.0, help="time spent measuring each matmul peak")
    p.add_argument("--bundled", default="camvid", help="bundled model to include ('' for none)")
    p.add_argument("--cases", action="append", default=[], metavar="FILE.py[:FUNC]",
                   help="also time the models of FUNC(num_classes, size, device) -> list[Case] in FILE.py (default "
                        "FUNC: cases), e.g. benchmarks/peers.py for torchvision and segmentation_models_pytorch; "
                        "repeatable")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime (and int8)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 ONNX model")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile of the last PyTorch path (about 25 s of compiling per model)")
    p.add_argument("--camvid", type=Path, help="CamVid root: train/ calibrates int8, val/ checks every path of the "
                   "bundled model (without it: no int8, correctness judged on the benchmark frame)")
    p.add_argument("--calib-count", type=int, default=16, help="calibration frames for int8")
    p.add_argument("--no-val", action="store_true", help="skip the CamVid val agreement/mIoU check")
    p.add_argument("--val-limit", type=int, help="only the first N CamVid val frames")
    p.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    p.add_argument("--train-size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="crop size of the training-step measurement")
    p.add_argument("--train-batch", type=int, default=2, help="batch of the training-step measurement")
    p.add_argument("--no-scaling", action="store_true", help="skip the size/batch scaling study")
    p.add_argument("--scaling-sizes", type=int, nargs="+", default=[256, 384, 512, 768, 1024],
                   help="square sizes of the scaling study")
    p.add_argument("--scaling-batches", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="batch sizes of the scaling study")
    p.add_argument("--no-slide", action="store_true", help="skip the sliding-window run")
    p.add_argument("--slide-image", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"),
                   help="image size of the sliding-window run")
    p.add_argument("--slide-crop", type=int, nargs=2, default=[473, 473], metavar=("H", "W"),
                   help="window of the sliding-window run")
    p.add_argument("--json", type=Path, help="write the full result as JSON here")
    p.add_argument("--chart", type=Path, help="write a PNG chart here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> "BenchConfig":
    """The ``BenchConfig`` that the command-line options ask for."""
    from pspnet.benchmark import BenchConfig

    return BenchConfig(model=args.model, num_classes=args.num_classes, size=tuple(args.size), repeats=args.repeats,
                       warmup=args.warmup, device=args.device, threads=args.threads, bundled=args.bundled or None,
                       cases=tuple(args.cases), onnx=not args.no_onnx, int8=not (args.no_int8 or args.no_onnx),
                       compile=args.compile, camvid=str(args.camvid) if args.camvid else None,
                       calib_count=args.calib_count, val=not args.no_val, val_limit=args.val_limit,
                       train=not args.no_train, train_size=tuple(args.train_size), train_batch=args.train_batch,
                       scaling=not args.no_scaling, scaling_sizes=tuple(args.scaling_sizes),
                       scaling_batches=tuple(args.scaling_batches), slide=not args.no_slide,
                       slide_image=tuple(args.slide_image), slide_crop=tuple(args.slide_crop),
                       peak_seconds=args.peak_seconds)


def show_progress(quiet: bool) -> None:
    """Progress lines of the benchmark (its INFO log records) on stderr, unless ``quiet``."""
    logging.basicConfig(format="%(message)s", stream=sys.stderr)  # no-op where logging is already set up
    logging.getLogger("pspnet.benchmark").setLevel(logging.WARNING if quiet else logging.INFO)


def run(args: argparse.Namespace) -> int:
    from pspnet.benchmark import format_table, plot, run_benchmark, write_json

    show_progress(args.quiet)
    result = run_benchmark(config_from_args(args))
    print(format_table(result))
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    if args.chart:
        print(f"wrote {plot(result, args.chart)}")
    return 0
