"""ImageNet weights for the paper's deep-stem ResNet from a local file, whatever library saved it.

Three layouts are recognised by their keys and renamed onto ``DilatedResNet`` (semseg's ``layer0..4``):

* ``semseg``: hszhao/semseg's ``resnet50_v2.pth``/``resnet101_v2.pth`` (``conv1 bn1 conv2 bn2 conv3 bn3``
  stem, 64-64-128 wide, torchvision bottlenecks, ``downsample.0/1``), loaded by ``pspnet_resnet50/101``.
* ``mmseg``: mmsegmentation's ``resnet50_v1c`` (``stem.0/1/3/4/6/7``, 32-32-64 wide, ``downsample.0/1``),
  optionally under ``state_dict`` and ``backbone.``, loaded by ``pspnet_resnet50_v1c``.
* ``timm``: timm's ``resnet50d`` (``conv1.0/1/3/4/6`` + ``bn1``, 32-32-64 wide, ``downsample.1/2`` after an
  average pool), loaded by ``pspnet_resnet50_v1c``. Our shortcut is a strided 1x1 conv, not
  avg-pool + 1x1 conv, so these weights start a fine-tune well but are not the exact ImageNet network.

The ImageNet classifier (``fc``) is dropped; every other tensor must be there with the right shape,
and what is missing or extra is named.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from pspnet.errors import PSPNetError
from pspnet.model.serialization import safe_torch_load

logger = logging.getLogger(__name__)

# Regex -> replacement, first match wins; keys matching none keep their name (and are then named as extra).
KEY_MAPS: dict[str, dict[str, str]] = {
    "semseg": {r"^conv1\.": "layer0.0.", r"^bn1\.": "layer0.1.", r"^conv2\.": "layer0.3.", r"^bn2\.": "layer0.4.",
               r"^conv3\.": "layer0.6.", r"^bn3\.": "layer0.7."},
    "mmseg": {r"^stem\.": "layer0."},
    "timm": {r"^conv1\.": "layer0.", r"^bn1\.": "layer0.7.", r"\.downsample\.1\.": ".downsample.0.",
             r"\.downsample\.2\.": ".downsample.1."},
    "pspnet": {},
}
CLASSIFIER = ("fc.", "head.fc.")
WRAPPERS = ("state_dict", "model", "module")
PREFIXES = ("module.", "backbone.")
# The model name each layout's stem widths belong to.
MODEL_FOR = {"semseg": "pspnet_resnet50 / pspnet_resnet101", "mmseg": "pspnet_resnet50_v1c",
             "timm": "pspnet_resnet50_v1c"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The name -> tensor dict in a .pth/.pt (loaded with ``weights_only=True``) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise PSPNetError(f"{path}: no such backbone weights file; give an existing .pth or .safetensors file "
                          "with --backbone-weights, or train from scratch with --no-pretrained")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise PSPNetError(f"{path}: not a readable safetensors file ({err})") from err
    raw = safe_torch_load(path)
    for key in WRAPPERS:
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
    if not isinstance(raw, Mapping) or not raw:
        raise PSPNetError(f"{path}: holds no state dict (a mapping of tensor names to tensors)")
    state = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise PSPNetError(f"{path}: its state dict holds no tensors")
    return state


def detect_layout(keys: set[str]) -> str | None:
    if "layer0.0.weight" in keys:
        return "pspnet"
    if "stem.0.weight" in keys:
        return "mmseg"
    if "conv1.0.weight" in keys:
        return "timm"
    if {"conv1.weight", "conv3.weight", "bn3.weight"} <= keys:
        return "semseg"
    return None


def map_backbone_keys(state: Mapping[str, torch.Tensor],
                      origin: str = "weights") -> tuple[str, dict[str, torch.Tensor]]:
    """(layout, state renamed to ``DilatedResNet`` keys); wrappers, prefixes and the classifier removed."""
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    layout = detect_layout(set(state))
    if layout is None:
        some = ", ".join(sorted(state)[:4])
        raise PSPNetError(f"{origin}: not ImageNet weights of a deep-stem ResNet that pspnet knows (it has {some}, "
                          "...); expected semseg's resnet50_v2.pth, mmseg's resnet50_v1c or timm's resnet50d")
    out = {}
    for key, value in state.items():
        if key.startswith(CLASSIFIER):
            continue
        for pattern, repl in KEY_MAPS[layout].items():
            key, hits = re.subn(pattern, repl, key)
            if hits:
                break
        out[key] = value
    return layout, out


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> str:
    """Fill ``backbone`` (a ``DilatedResNet``) from an ImageNet weights file; returns the detected layout.

    Nothing is loaded unless every tensor fits: missing, extra and wrongly shaped tensors are all named.
    """
    layout, state = map_backbone_keys(read_state_dict(path), str(path))
    own = backbone.state_dict()
    wanted = {k for k in own if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(wanted - given), sorted(given - wanted)
    wrong = [k for k in sorted(wanted & given) if state[k].shape != own[k].shape]
    if missing or extra or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} with other shapes, e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} in the file "
                         f"vs {tuple(own[wrong[0]].shape)} in the model")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {', '.join(missing[:3])}")
        if extra:
            parts.append(f"{len(extra)} extra, e.g. {', '.join(extra[:3])}")
        hint = f" ({layout} weights fit {MODEL_FOR[layout]}: pass --model accordingly)" if layout in MODEL_FOR else ""
        raise PSPNetError(f"{path}: {layout} ImageNet weights do not fit this backbone: {'; '.join(parts)}{hint}")
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if layout == "timm":
        logger.warning("%s: timm resnet50d weights: its shortcut average-pools before the 1x1 conv, ours strides the "
                       "conv, so these weights are a starting point for fine-tuning, not the exact ImageNet network",
                       path)
    logger.info("backbone: ImageNet weights from %s (%s layout, %d tensors)", path, layout, len(wanted))
    return layout
