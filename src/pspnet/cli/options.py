"""Option groups shared by several subcommands, defined once so their names, choices and help agree.

Nothing here imports torch: ``pspnet --help`` builds every parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from pspnet.errors import PSPNetError
from pspnet.meta import SCALE_RANGE

PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
BACKENDS = ["torch", "onnxruntime"]
# pspnet.data.DATASETS' names (a test keeps the two equal; importing pspnet.data here would load torch)
DATASET_NAMES = ["ade20k", "camvid", "coco-stuff", "coco_stuff", "cityscapes", "folder", "list", "medical", "voc",
                 "voc2012"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; an option without one (default None) shows none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose subcommands use :class:`HelpFormatter` unless they ask for another."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line, like every other error of the CLI (the usage of ``pspnet predict`` alone is ten)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_device(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default,
                        help="cpu, cuda, cuda:N or mps; auto picks the first GPU if there is one, else the CPU")


def add_precision(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument("--precision", default=default, choices=PRECISIONS,
                        help="auto: bf16 where the device computes it natively (AMX/AVX512-BF16 CPUs, Ampere+ GPUs), "
                             "fp16 autocast on older GPUs, else fp32; on CPUs with AVX512-VNNI and BF16 but no AMX, "
                             "predict, eval and serve also run a calibrated model's two big head convs in int8")


def add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="onnxruntime runs an .onnx file, or exports the model once into the cache")


def eval_scale(text: str) -> float:
    """``--eval-scale``: a factor in PSPNet's own range, refused in one line otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not SCALE_RANGE[0] <= value <= SCALE_RANGE[1]:
        raise argparse.ArgumentTypeError(f"{text} is outside [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}]")
    return value


def add_model(parser: argparse.ArgumentParser, default: str = "camvid") -> None:
    parser.add_argument("--model", default=default,
                        help="bundled name (camvid), .safetensors/.pth/.onnx file, model folder, training run folder "
                             "(its best.safetensors, else last.safetensors) or Hub id")
    parser.add_argument("--eval-scale", type=eval_scale, metavar="S",
                        help="the model reads frames enlarged by S (default: the model's own eval_scale; the bundled "
                             "camvid model reads at 1.33 where its int8 head runs, else at 1 with precision auto; "
                             "--eval-scale 1 is its 1.4x faster, about 1.2 points less accurate reading)")


def add_dataset(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--dataset``, ``--data-root`` and ``--data-opt``."""
    parser.add_argument("--dataset", required=required, choices=DATASET_NAMES, metavar="NAME",
                        help=f"dataset layout: {', '.join(DATASET_NAMES)}")
    parser.add_argument("--data-root", required=required, help="the dataset's folder")
    parser.add_argument("--data-opt", action="append", default=[], metavar="KEY=YAML",
                        help="folder/list dataset options, e.g. --data-opt num_classes=2 --data-opt binary=true")


def parse_options(items: list[str], flag: str = "--data-opt") -> dict:
    """``KEY=YAML`` pairs (``--data-opt num_classes=3``) as a dict."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PSPNetError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise PSPNetError(f"{flag} {item!r}: the value is not valid YAML ({err})") from err
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, counts), refused with the value in the message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; expected an integer >= 1")
    return value


def add_segmenter(parser: argparse.ArgumentParser) -> None:
    """Everything a ``Segmenter`` is built from (``pspnet predict`` and ``pspnet serve``)."""
    add_model(parser)
    add_device(parser)
    add_precision(parser)
    add_backend(parser)
    parser.add_argument("--mode", default="whole", choices=["whole", "slide"],
                        help="slide: sliding window for large images")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="sliding-window crop size")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale testing, e.g. 0.75 1 1.25")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--batch-size", type=int, default=4, help="most images in one forward pass")


def segmenter_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``Segmenter(**segmenter_kwargs(args))`` for the options of ``add_segmenter``."""
    return {"model": model_for_backend(args.model, args.backend, args.eval_scale), "device": args.device,
            "precision": args.precision, "backend": args.backend, "mode": args.mode, "crop": args.crop,
            "scales": args.scales, "flip": args.flip, "batch_size": args.batch_size,
            "eval_scale": args.eval_scale if args.backend == "torch" else None}


def model_for_backend(model: str, backend: str, eval_scale: float | None = None) -> str | Path:
    """``--model`` as the backend runs it: for onnxruntime an exported .onnx (made once per ``--eval-scale``, then
    cached)."""
    if backend != "onnxruntime":
        return model
    from pspnet.export.onnx import cached_onnx

    return cached_onnx(model, eval_scale)
