"""``pspnet calibrate``: int8 ranges for a model's two big head convs, from real frames, saved with a copy of it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pspnet.cli.options import add_model
from pspnet.meta import CALIBRATION_FRAMES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="record int8 ranges for the head's big convs (a faster CPU path)",
                       description="Runs the model in fp32 over --count frames spread over --images, records the "
                                   "input range of the pyramid bottleneck and the decoder's 3x3 conv, and saves the "
                                   "model with them to --out, a new folder. `pspnet predict` and `serve` with that "
                                   "model then run those two convs in int8 on CPUs with AVX512-VNNI and no AMX "
                                   "(precision auto); training the model further makes the ranges stale, and they "
                                   "are then ignored.")
    add_model(p)
    p.add_argument("--images", type=Path, required=True,
                   help="folder of real frames like those the model will segment (e.g. its training images)")
    p.add_argument("--count", type=int, default=CALIBRATION_FRAMES,
                   help="frames to calibrate on, spread over the folder")
    p.add_argument("--out", type=Path, required=True, help="new folder for the calibrated model (never replaced)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pspnet.data.io import list_images, spread_evenly
    from pspnet.device import cpu_has_native_bf16
    from pspnet.errors import PSPNetError
    from pspnet.inference.int8 import calibrate_int8, int8_available
    from pspnet.model.bundled import load

    if args.count < 1:
        raise PSPNetError(f"--count {args.count}: must be at least 1")
    if args.out.exists():
        raise PSPNetError(f"{args.out}: already exists; pspnet calibrate writes a new folder and never replaces one")
    if not args.images.is_dir():
        raise PSPNetError(f"{args.images}: not a folder of images")
    frames = spread_evenly(list_images(args.images), args.count)
    if not frames:
        raise PSPNetError(f"{args.images}: no images to calibrate on")
    model = load(args.model, args.eval_scale)
    ranges = calibrate_int8(model, frames)
    model.save_pretrained(args.out)
    print(json.dumps({"out": str(args.out), **ranges,
                      "int8_on_this_cpu": int8_available() and cpu_has_native_bf16()}, indent=2))
    return 0
