"""``pspnet check-data``: validate a dataset before a long run; exit code 2 if anything is wrong."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pspnet.cli.options import DATASET_NAMES, parse_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="validate a dataset and report every problem at once",
                       description="Read every image and mask of the given splits and list all problems: missing "
                       "masks or images, size mismatches, label values outside the class set (with their pixel "
                       "counts and the fix), unreadable, corrupt or empty files, empty folders, and for your own "
                       "data (folder, list, medical) classes with no pixels in the training split. Prints the "
                       "classes, the mask value of each and their pixel shares. Exit code 2 if there are any "
                       "problems.")
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES, metavar="NAME",
                   help=f"dataset layout: {', '.join(DATASET_NAMES)}")
    p.add_argument("--data-root", required=True, type=Path, help="the dataset's folder")
    p.add_argument("--split", nargs="+", default=["train", "val"], help="the splits to check")
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=YAML",
                   help="folder/list/medical options, e.g. --data-opt mask_values='[0, 255]' --data-opt "
                   "binary=true --data-opt window=40,400 (none needed for 0/255 or 0/1 masks)")
    p.add_argument("--workers", type=int, default=4, help="reading threads")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from pspnet.data.check import check_dataset

    report = check_dataset(args.dataset, args.data_root, args.split, workers=args.workers,
                           progress=not args.no_progress, **parse_options(args.data_opt))
    print(report.text())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 2
