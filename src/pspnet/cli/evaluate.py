"""``pspnet eval``: mIoU, per-class IoU and the confusion matrix of a model on a dataset split."""

from __future__ import annotations

import argparse
from pathlib import Path

from pspnet.cli.options import (add_backend, add_dataset, add_device, add_model, add_precision, model_for_backend,
                                parse_options)
from pspnet.errors import PSPNetError


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate a model on a dataset split (mIoU, per-class IoU, confusion matrix)",
                       description="Prints the per-class table (IoU, Dice, precision, recall) and, with --out, writes "
                       "metrics.json, per_class_iou.png, confusion_matrix.png, for two classes pr_curve.png and with "
                       "--by-sequence per_sequence_iou.png. It scores the labels `pspnet predict` gives (same network "
                       "and precision).")
    add_model(e)
    add_dataset(e)
    e.add_argument("--split", default="val", help="the split to evaluate")
    e.add_argument("--mode", choices=["whole", "slide"], default="whole",
                   help="whole images, or a sliding window of --crop (large images)")
    e.add_argument("--crop", type=int, nargs="+", metavar="H W", help="window of slide mode (usually the train crop)")
    e.add_argument("--scales", type=float, nargs="+", default=[1.0], help="e.g. 0.5 0.75 1 1.25 1.5 1.75")
    e.add_argument("--flip", action="store_true", help="also average the horizontally flipped prediction")
    e.add_argument("--out", type=Path, help="folder for metrics.json and the plots")
    add_device(e)
    add_precision(e)
    add_backend(e)
    e.add_argument("--threshold", type=float, metavar="P",
                   help="two-class models: predict --positive where its probability >= P (default: argmax, i.e. "
                        "0.5); pick P from pr_curve.png")
    e.add_argument("--positive", type=int, default=1, choices=[0, 1],
                   help="two-class models: the foreground class of --threshold and the precision-recall curve")
    e.add_argument("--by-sequence", action="store_true",
                   help="also score each video sequence on its own (the file-name prefix before the first '_', or "
                        "--data-opt sequence_pattern=REGEX): a drive that dominates the split cannot hide another")
    e.add_argument("--limit", type=int, help="only the first N images (a quick look)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pspnet.engine.evaluate import evaluate_model, write_report
    from pspnet.device import resolve_device
    from pspnet.inference.batch import validate_numbers

    if args.crop is not None and len(args.crop) not in (1, 2):
        raise PSPNetError(f"--crop takes H [W], got {args.crop}")
    validate_numbers(args.scales, crop=args.crop)
    if args.limit is not None and args.limit < 1:
        raise PSPNetError(f"--limit {args.limit}: must be at least 1")
    resolve_device(args.device)  # a bad --device is one line, before any model loads
    metrics = evaluate_model(model_for_backend(args.model, args.backend, args.eval_scale), args.dataset,
                             Path(args.data_root), args.split, args.mode, args.crop,
                             args.scales, args.flip, args.device, args.precision, None, args.limit,
                             not args.no_progress, backend=args.backend, threshold=args.threshold,
                             positive=args.positive, eval_scale=args.eval_scale if args.backend == "torch" else None,
                             by_sequence=args.by_sequence,
                             **parse_options(args.data_opt))
    print(metrics.table())
    if args.out:
        print("wrote " + ", ".join(str(path) for path in write_report(metrics, args.out)))
    return 0
