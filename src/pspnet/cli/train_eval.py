"""``pspnet train`` and ``pspnet eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from pspnet.cli.check_data import parse_options
from pspnet.errors import PSPNetError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a PSPNet (official recipe by default)",
                       description="Train with a YAML recipe (configs/) and/or options; options override the recipe.")
    p.add_argument("--config", type=Path, help="YAML recipe, e.g. configs/camvid_lite0.yaml")
    p.add_argument("--resume", nargs="?", const="auto", help="continue from OUT/last.pt (or a given checkpoint)")
    p.add_argument("--no-progress", action="store_true")
    for name, kind in [("dataset", str), ("data-root", str), ("model", str), ("out-dir", str), ("batch-size", int),
                       ("iterations", int), ("epochs", float), ("lr", float), ("optimizer", str),
                       ("precision", str), ("device", str),
                       ("workers", int), ("seed", int), ("eval-every", int), ("checkpoint-every", int),
                       ("warmup-iters", int), ("aux-weight", float), ("head-lr-mult", float), ("weight-decay", float)]:
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--crop-size", type=int, nargs="+", help="H [W]")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--wandb", action="store_true", default=None)
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=YAML",
                   help="folder/list dataset options, e.g. --data-opt num_classes=2 --data-opt binary=true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                   help="any other option, e.g. --set model_kwargs='{output_stride: 16}'")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="evaluate a model on a dataset split (mIoU, per-class IoU, confusion matrix)",
                       description="Writes metrics.json, per_class_iou.png and confusion_matrix.png to --out and "
                       "prints the per-class table.")
    e.add_argument("--model", default="camvid", help="bundled name, .safetensors, model folder or checkpoint")
    e.add_argument("--dataset", required=True)
    e.add_argument("--data-root", required=True, type=Path)
    e.add_argument("--split", default="val")
    e.add_argument("--mode", choices=["whole", "slide"], default="whole")
    e.add_argument("--crop", type=int, nargs="+", metavar="H W", help="window of slide mode (usually the train crop)")
    e.add_argument("--scales", type=float, nargs="+", default=[1.0], help="e.g. 0.5 0.75 1 1.25 1.5 1.75")
    e.add_argument("--flip", action="store_true", help="also average the horizontally flipped prediction")
    e.add_argument("--out", type=Path, help="folder for metrics.json and the plots")
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    e.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="onnxruntime runs an .onnx file, or exports the model once into the cache")
    e.add_argument("--limit", type=int, help="only the first N images (a quick look)")
    e.add_argument("--data-opt", action="append", default=[], metavar="KEY=YAML", help="folder/list dataset options")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_eval)


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
                "aux_weight", "head_lr_mult", "weight_decay", "crop_size", "channels_last", "wandb", "epochs"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if args.data_opt:
        values["dataset_options"] = {**(values.get("dataset_options") or {}), **parse_options(args.data_opt)}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise PSPNetError(f"--set expects KEY=VALUE, got {item!r}")
        values[key] = yaml.safe_load(raw)
    result = train(TrainConfig.from_dict(values), resume=args.resume, progress=not args.no_progress)
    print(json.dumps({"best_miou": result["best_miou"], "out_dir": result["out_dir"]}))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from pspnet.engine.evaluate import evaluate_model
    from pspnet.export.onnx import cached_onnx

    if args.crop is not None and len(args.crop) not in (1, 2):
        raise PSPNetError(f"--crop takes H [W], got {args.crop}")
    model = cached_onnx(args.model) if args.backend == "onnxruntime" else args.model
    metrics = evaluate_model(model, args.dataset, args.data_root, args.split, args.mode, args.crop, args.scales,
                             args.flip, args.device, args.precision, args.out, args.limit, not args.no_progress,
                             backend=args.backend, **parse_options(args.data_opt))
    print(metrics.table())
    if args.out:
        print(f"wrote {args.out / 'metrics.json'}, per_class_iou.png, confusion_matrix.png")
    return 0
