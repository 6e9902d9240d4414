"""``pspnet export``: a model to ONNX (dynamic batch/height/width, config in the metadata), optionally int8."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pspnet.cli.options import add_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (dynamic sizes), optionally int8-quantized",
                       description="Writes an .onnx file with dynamic batch, height and width and the model config "
                                   "(classes, palette, mean/std) in its metadata, then checks ONNX Runtime against "
                                   "PyTorch at two sizes other than the traced one.")
    add_model(p)
    p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="example size for tracing only; the file works at any size")
    p.add_argument("--exporter", default="torchscript", choices=["torchscript", "dynamo"],
                   help="torch.onnx exporter: the TorchScript tracer or torch.export (dynamo)")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm as separate nodes")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")
    p.add_argument("--int8", action="store_true", help="also write OUT_int8.onnx (static int8, calibrated on --calib)")
    p.add_argument("--calib", type=Path, help="folder of real frames to calibrate int8 on (e.g. the training images)")
    p.add_argument("--calib-count", type=int, default=32, help="calibration frames for int8")
    p.add_argument("--calib-size", type=int, nargs=2, metavar=("H", "W"), help="resize calibration frames")
    p.add_argument("--int8-check", type=Path, help="frames to compare int8 with fp32 on (default: the --calib folder; "
                   "held-out frames such as a val split are the honest check)")
    p.add_argument("--int8-float", default="backbone", choices=["classifier", "sensitive", "backbone"],
                   help="convs kept in float: the classifier only; also the stem and depthwise convs; or the whole "
                        "backbone (backbone: only the pyramid pooling and head in int8, the one that keeps >= 99.5%% "
                        "argmax agreement on the bundled model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pspnet.errors import PSPNetError
    from pspnet.export.onnx import export_onnx

    import torch.onnx._constants as onnx_constants

    max_opset = onnx_constants.ONNX_MAX_OPSET
    if not 11 <= args.opset <= max_opset:
        raise PSPNetError(f"--opset {args.opset}: this torch exports opsets 11 to {max_opset}")
    for flag, values in (("--size", args.size), ("--calib-size", args.calib_size or [1]),
                         ("--calib-count", [args.calib_count])):
        if min(values) < 1:
            raise PSPNetError(f"{flag} {' '.join(map(str, values))}: must be at least 1")
    if args.size[0] * args.size[1] > 16_000_000:
        raise PSPNetError(f"--size {args.size[0]} {args.size[1]}: the tracing example needs no more than 16 MP "
                          "(the file works at any size)")
    if args.int8 and not args.calib:
        raise PSPNetError("--int8 needs --calib FOLDER with real frames (ranges from noise would be wrong)")
    from pspnet.model.bundled import load

    report = export_onnx(load(args.model, args.eval_scale), args.out, size=args.size, opset=args.opset,
                         exporter=args.exporter, fold_bn=not args.no_fold_bn, check=not args.no_check)
    if args.int8:
        from pspnet.export.quantize import compare_on_frames, quantize_onnx

        out8 = args.out.with_name(args.out.stem + "_int8.onnx")
        report["int8"] = quantize_onnx(args.out, out8, args.calib, args.calib_count, args.calib_size,
                                       keep_float=args.int8_float)
        report["int8"]["vs_fp32"] = compare_on_frames(args.out, out8, args.int8_check or args.calib,
                                                      min(8, args.calib_count), args.calib_size)
    print(json.dumps(report, indent=2))
    return 0
