"""``pspnet convert``: a semseg or mmseg checkpoint -> a pspnet model folder (safetensors + config + card)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from pspnet.errors import PSPNetError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a semseg/mmseg checkpoint to a pspnet model folder",
                       description="Read a checkpoint of hszhao/semseg or mmsegmentation (or pspnet's own), detected "
                       "from its keys, map its weights onto pspnet's PSPNet and write model.safetensors, config.json "
                       "and a model card README.md to --out. Nothing in the file is executed.")
    p.add_argument("checkpoint", type=Path, help="the .pth/.pt/.safetensors file")
    p.add_argument("--out", type=Path, required=True, help="folder to write (must be new or empty unless --overwrite)")
    p.add_argument("--from", dest="source", choices=["auto", "semseg", "mmseg", "pspnet"], default="auto",
                   help="origin of the checkpoint (auto: detect from its keys); refused if its keys say otherwise")
    p.add_argument("--dataset", help="voc, cityscapes, ade20k or camvid: class names and palette to store when the "
                   "checkpoint has none (default: guessed from the class count 21/19/150/11)")
    p.add_argument("--num-classes", type=int, help="replace the classifier with a new one for this many classes, "
                   "to fine-tune on another class set (train with init_weights: OUT)")
    p.add_argument("--overwrite", action="store_true", help="replace the model files in an existing --out folder")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from pspnet.model.pspnet import PSPNet, replace_head
    from pspnet.model.serialization import load_weights_file

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise PSPNetError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise PSPNetError(f"{out}: folder is not empty; pass --overwrite to replace its model files")
    if args.num_classes is not None and args.num_classes < 2:
        raise PSPNetError(f"--num-classes must be at least 2, got {args.num_classes}")
    # Everything that can fail happens before the first write, so a bad input never leaves half a folder.
    model = load_weights_file(args.checkpoint, PSPNet, source=None if args.source == "auto" else args.source,
                              dataset=args.dataset)
    source = f"Converted from `{args.checkpoint.name}`"
    if args.num_classes is not None and args.num_classes != model.num_classes:
        source += f"; the {model.num_classes}-class classifier was replaced by a new {args.num_classes}-class one"
        replace_head(model, args.num_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        model.save_pretrained(tmp, model_card_kwargs={"source": source + "."})
        out.mkdir(exist_ok=True)
        for f in Path(tmp).iterdir():
            f.replace(out / f.name)
    summary = {"out": str(out), "backbone": model.config["backbone"], "num_classes": model.num_classes,
               "classes": model.class_names[:5] + (["..."] if model.num_classes > 5 else [])}
    print(json.dumps(summary))
    return 0
