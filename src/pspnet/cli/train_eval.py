"""``pspnet train`` and ``pspnet eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from pspnet.errors import PSPNetError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a PSPNet (official recipe by default)",
                       description="Train with a YAML recipe (configs/) and/or options; options override the recipe.")
    p.add_argument("--config", type=Path, help="YAML recipe, e.g. configs/camvid_lite0.yaml")
    p.add_argument("--resume", nargs="?", const="auto", help="continue from OUT/last.pt (or a given checkpoint)")
    p.add_argument("--no-progress", action="store_true")
    for name, kind in [("dataset", str), ("data-root", str), ("model", str), ("out-dir", str), ("batch-size", int),
                       ("iterations", int), ("lr", float), ("optimizer", str), ("precision", str), ("device", str),
                       ("workers", int), ("seed", int), ("eval-every", int), ("checkpoint-every", int),
                       ("warmup-iters", int), ("aux-weight", float), ("head-lr-mult", float), ("weight-decay", float)]:
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--crop-size", type=int, nargs="+", help="H [W]")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--wandb", action="store_true", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                   help="any other option, e.g. --set model_kwargs='{output_stride: 16}'")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from pspnet.engine.train import TrainConfig, train

    values = {}
    if args.config:
        if not args.config.is_file():
            raise PSPNetError(f"{args.config}: no such config file")
        try:
            values = yaml.safe_load(args.config.read_text()) or {}
        except yaml.YAMLError as err:
            raise PSPNetError(f"{args.config}: not valid YAML ({err})") from err
    for key in ("dataset", "data_root", "model", "out_dir", "batch_size", "iterations", "lr", "optimizer",
                "precision", "device", "workers", "seed", "eval_every", "checkpoint_every", "warmup_iters",
                "aux_weight", "head_lr_mult", "weight_decay", "crop_size", "channels_last", "wandb"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise PSPNetError(f"--set expects KEY=VALUE, got {item!r}")
        values[key] = yaml.safe_load(raw)
    result = train(TrainConfig.from_dict(values), resume=args.resume, progress=not args.no_progress)
    print(json.dumps({"best_miou": result["best_miou"], "out_dir": result["out_dir"]}))
    return 0
