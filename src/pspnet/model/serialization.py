"""Weights on disk: safetensors with the config inside, safe ``torch.load``, and building a model from a state.

Nothing here runs code from a file: safetensors holds tensors and a JSON header, and pickles go
through ``safe_torch_load``, which admits tensors and containers only. Functions that build a
model take its class (``model_cls``), so this module never imports the network it loads.
"""

from __future__ import annotations

import inspect
import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pspnet.errors import PSPNetError
from pspnet.files import atomic_path, require_file
from pspnet.meta import dataset_meta, guess_dataset
from pspnet.model.convert import DEFAULT_BINS, FORMATS, convert_state_dict, detect_format, some_keys

M = TypeVar("M", bound=nn.Module)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# Globals that training frameworks leave in checkpoint metadata (mmengine's MessageHub history,
# numpy seeds and arrays). They are replaced by inert placeholders; anything else is refused.
METADATA_GLOBAL_PREFIXES = ("mmengine.", "mmcv.", "mmseg.", "numpy.")


class _Placeholder:
    """Stands in for a metadata object during unpickling: stores its arguments, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholder_getattr(obj: Any, name: str) -> Any:
    """``getattr`` for pickles, limited to placeholders (mmengine pickles ``HistoryBuffer.min`` that way)."""
    if isinstance(obj, _Placeholder) or (isinstance(obj, type) and issubclass(obj, _Placeholder)):
        return _Placeholder(name)
    raise pickle.UnpicklingError(f"GLOBAL builtins.getattr on {type(obj).__name__}")


def _refused(path: Path, names: str) -> PSPNetError:
    return PSPNetError(f"{path}: refused to load: the pickle asks for {names}, which could run code. pspnet only "
                       "unpickles tensors and plain containers; load checkpoints you trust, publish safetensors.")


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` that never runs code from the file: anything but tensors and containers is refused.

    Framework metadata objects (mmengine, numpy) become inert placeholders so that training
    checkpoints of those frameworks still load; a pickle naming any other callable is refused.
    """
    path = Path(path)
    try:
        unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) pickles cannot be scanned: torch.load below refuses their globals
        unsafe = []
    blocked = [g for g in unsafe if not g.startswith(METADATA_GLOBAL_PREFIXES) and g != "builtins.getattr"]
    if blocked:
        raise _refused(path, ", ".join(blocked[:5]))
    placeholders = [(_placeholder_getattr if g == "builtins.getattr" else _Placeholder, g) for g in unsafe]
    try:
        with torch.serialization.safe_globals(placeholders):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise PSPNetError(f"{path}: cannot read the file ({err.strerror or err})") from err
    except Exception as err:  # torch's weights-only unpickler names a refused global as "GLOBAL module.name"
        text = str(err)
        if match := re.search(r"GLOBAL (\S+)", text):
            raise _refused(path, match.group(1)) from err
        first = next((line for line in text.splitlines() if line.strip()), "")
        raise PSPNetError(f"{path}: not a readable PyTorch checkpoint, the file is damaged, truncated or not "
                          f"saved by torch.save ({type(err).__name__}: {first[:160]})") from err


def save_safetensors(model: nn.Module, path: str | Path) -> None:
    """Write weights with the config (``model.config``) in the metadata, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"pspnet_config": json.dumps(model.config), "format": "pt"})


def read_safetensors_config(path: str | Path) -> dict[str, Any]:
    """The model config saved with a safetensors file (its metadata, or a config.json beside it)."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise PSPNetError(f"{path}: not a readable safetensors file ({err})") from err
    if "pspnet_config" in meta:
        text, where = meta["pspnet_config"], "its metadata"
    elif (path.parent / CONFIG_NAME).is_file():
        text, where = (path.parent / CONFIG_NAME).read_text(), str(path.parent / CONFIG_NAME)
    else:
        raise PSPNetError(f"{path}: no pspnet config in its metadata and no {CONFIG_NAME} beside it")
    try:
        config = json.loads(text)
    except ValueError as err:
        raise PSPNetError(f"{path}: the model config in {where} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise PSPNetError(f"{path}: the model config in {where} is a {type(config).__name__}, not a JSON object")
    return config


def with_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` updated with ``overrides``. A reading asked for (``eval_scale``) drops the stored fallback reading
    (``fallback_eval_scale``) unless one is given with it: it is then used on every path."""
    config = dict(config)
    if "eval_scale" in overrides:
        config.pop("fallback_eval_scale", None)
    return {**config, **overrides}


def load_safetensors(path: str | Path, model_cls: type[M], map_location: str = "cpu", **overrides: Any) -> M:
    """Rebuild a model from a safetensors file; ``overrides`` change config values (e.g. ``aux``)."""
    path = Path(path)
    config = read_safetensors_config(path)
    known = {*config, "pretrained_backbone", "eval_scale", "fallback_eval_scale"}
    config = with_overrides(config, {k: v for k, v in overrides.items() if k in known})
    config["pretrained_backbone"] = False
    state = load_file(str(path), device=str(map_location))
    return build_with_state(model_cls, config, state, str(path))


def classifier_key(config: dict[str, Any]) -> str:
    """The state-dict key of the final 1x1 conv's weight (its rows are the classes) for ``config``."""
    return "decoder.fuse.4.weight" if config.get("decoder_channels") else "cls.4.weight"


def build_with_state(model_cls: type[M], config: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> M:
    """Build the model from ``config`` and load ``state`` strictly, explaining any mismatch.

    The model is first built on the meta device, so a config that asks for more than the weights
    hold (a damaged or hostile file) is refused before any memory is allocated, and weights with
    NaN or Inf are refused rather than predicting one class everywhere.
    """
    classifier = state.get(classifier_key(config))
    if classifier is not None and classifier.shape[0] != config.get("num_classes"):
        found, asked = classifier.shape[0], config.get("num_classes")
        raise PSPNetError(f"{source}: the weights have {found} classes, not {asked}. To fine-tune them on {asked} "
                          f"classes, give them a new head: `pspnet convert WEIGHTS --num-classes {asked} --out DIR`, "
                          f"then `pspnet train ... --set init_weights=DIR` (in Python: pspnet.replace_head(model, {asked}))")
    try:
        with torch.device("meta"):
            skeleton = model_cls(**config)
    except (TypeError, ValueError, KeyError, PSPNetError, RuntimeError) as err:  # no model has this config
        raise PSPNetError(f"{source}: its config does not build a {model_cls.__name__} ({err})") from err
    if not config.get("aux", True):
        state = {k: v for k, v in state.items() if not k.startswith("aux.")}
    own = skeleton.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise PSPNetError(f"{source}: weights do not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''} "
                          f"({len(missing)}), unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise PSPNetError(f"{source}: {len(wrong)} tensors have other shapes, e.g. {wrong[0][0]} {wrong[0][1]} vs {wrong[0][2]}")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise PSPNetError(f"{source}: {len(broken)} weight tensors hold NaN or Inf (e.g. {broken[0]}): the file is "
                          "damaged or its training diverged")
    model = model_cls(**config)
    model.load_state_dict(state)
    return model.eval()


def _set_dataset(config: dict[str, Any], dataset: str, origin: str) -> None:
    """Class names and palette of a standard dataset, which must have the model's class count."""
    try:
        names, palette = dataset_meta(dataset)
    except KeyError as err:
        raise PSPNetError(f"{origin}: {err.args[0]}") from None
    if len(names) != config["num_classes"]:
        raise PSPNetError(f"{origin}: the model has {config['num_classes']} classes but {dataset} has {len(names)}")
    config.update(class_names=names, palette=palette)


def _model_kwargs(model_cls: type[nn.Module], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Only the keyword arguments the model's constructor takes (``from_pretrained`` passes Hub ones too)."""
    params = set(inspect.signature(model_cls.__init__).parameters) - {"self"}
    return {k: v for k, v in overrides.items() if k in params}


def convert_checkpoint(ckpt: Any, model_cls: type[M], source: str | None = None, dataset: str | None = None,
                       origin: str = "checkpoint", **overrides: Any) -> M:
    """A PSPNet (eval mode) from a loaded semseg/mmseg checkpoint; ``overrides`` set what shapes can't tell.

    Without class names in the checkpoint, ``dataset`` (or the standard dataset with that many
    classes: VOC 21, Cityscapes 19, ADE20K 150, CamVid 11) supplies them.
    """
    fmt, state, config = convert_state_dict(ckpt, source, origin)
    config.update(_model_kwargs(model_cls, overrides), pretrained_backbone=False)
    levels = len({k.split(".")[2] for k in state if k.startswith("ppm.features.")})
    if len(config.setdefault("bins", DEFAULT_BINS)) != levels:
        raise PSPNetError(f"{origin}: the pyramid has {levels} levels but bins are {config['bins']}; "
                          "pass bins=... with its pool sizes")
    model = build_with_state(model_cls, config, state, f"{origin} ({fmt})")
    if dataset is None and "class_names" not in config:
        dataset = guess_dataset(model.num_classes)
    if dataset:
        _set_dataset(model.config, dataset, origin)
    return model


def load_weights_file(path: str | Path, model_cls: type[M], source: str | None = None, dataset: str | None = None,
                      **overrides: Any) -> M:
    """A model from a .safetensors file, a pspnet training checkpoint, or a semseg/mmseg checkpoint (.pth).

    The origin is detected from the keys; ``source``, when given, must agree. ``dataset`` names the
    standard dataset whose class names and palette to use.
    """
    path = require_file(path, "a weights file")
    if source is not None and source not in FORMATS:
        raise PSPNetError(f"unknown checkpoint origin {source!r}; known: {', '.join(FORMATS)}")
    overrides = _model_kwargs(model_cls, overrides)
    if path.suffix == ".safetensors":
        if source not in (None, "pspnet"):
            raise PSPNetError(f"{path}: safetensors files are pspnet models, not {source} checkpoints")
        model = load_safetensors(path, model_cls, **overrides)
    else:
        ckpt = safe_torch_load(path)
        fmt = detect_format(ckpt)
        if fmt in ("semseg", "mmseg") and source in (None, fmt):
            return convert_checkpoint(ckpt, model_cls, fmt, dataset, str(path), **overrides)
        if fmt != "pspnet" or source not in (None, "pspnet") or "config" not in ckpt:
            hint = "; pspnet weights need their config: save models with save_pretrained" if fmt == "pspnet" else ""
            looks = f", which look like {fmt}" if fmt else ""
            raise PSPNetError(f"{path}: not a {source or 'pspnet, semseg or mmseg'} PSPNet checkpoint "
                              f"(it has {some_keys(ckpt)}{looks}){hint}")
        if not isinstance(ckpt["config"], Mapping):
            raise PSPNetError(f"{path}: its 'config' is a {type(ckpt['config']).__name__}, not a mapping")
        model = build_with_state(model_cls, {**with_overrides(ckpt["config"], overrides), "pretrained_backbone": False},
                                 ckpt["model"], str(path))
    if dataset:
        _set_dataset(model.config, dataset, str(path))
    return model
