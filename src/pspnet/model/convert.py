"""Checkpoints of hszhao/semseg and mmsegmentation, mapped onto our module names and config.

This module only renames keys and reads architecture from shapes; loading files and building
models is ``serialization``'s job. Three origins are recognised by their keys alone:

* ``pspnet``: our safetensors files and training checkpoints (``{"model", "config", ...}``).
* ``semseg`` (hszhao/semseg): ``{"epoch", "state_dict", "optimizer"}`` with ``module.layer0..4``,
  ``module.ppm.features.i``, ``module.cls``, ``module.aux``. Our module names are semseg's under
  ``backbone.``, so the map only strips ``module.`` and adds that prefix.
* ``mmseg`` (mmsegmentation 0.x/1.x ``PSPHead`` + ``FCNHead`` on ResNetV1c): ``{"meta", "state_dict"}``
  with ``backbone.stem``, ``decode_head.psp_modules/bottleneck/conv_seg``, ``auxiliary_head``.
  mmseg's head is the same computation as ours (the concat is ``[x, pooled...]`` in both, the
  bottleneck is the 3x3 conv-BN-ReLU, then dropout and the 1x1 classifier); only names differ.

The architecture (depth, stem widths, class count, head widths) is read from tensor shapes; what
shapes cannot tell (align_corners, contract_dilation, normalisation) comes from each origin's
fixed recipe, or from the config text that mmseg stores in ``meta``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from pspnet.errors import PSPNetError
from pspnet.model.resnet import DEPTHS, IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("pspnet", "semseg", "mmseg")
DEFAULT_BINS = [1, 2, 3, 6]

# Regex -> replacement, applied in order (first match wins). Keys matching none stay as they are,
# so the strict load in serialization.build_with_state names them as unexpected.
SEMSEG_KEYS: dict[str, str] = {
    r"^layer([0-4])\.": r"backbone.layer\1.",
}
MMSEG_KEYS: dict[str, str] = {
    r"^backbone\.stem\.": "backbone.layer0.",
    r"^decode_head\.psp_modules\.(\d+)\.1\.conv\.": r"ppm.features.\1.1.",
    r"^decode_head\.psp_modules\.(\d+)\.1\.bn\.": r"ppm.features.\1.2.",
    r"^decode_head\.bottleneck\.conv\.": "cls.0.",
    r"^decode_head\.bottleneck\.bn\.": "cls.1.",
    r"^decode_head\.conv_seg\.": "cls.4.",
    r"^auxiliary_head\.convs\.0\.conv\.": "aux.0.",
    r"^auxiliary_head\.convs\.0\.bn\.": "aux.1.",
    r"^auxiliary_head\.conv_seg\.": "aux.4.",
}
# ---- detection -------------------------------------------------------------------------------------


def _state_of(ckpt: Any) -> dict[str, Any]:
    """The flat name -> tensor dict inside a checkpoint of any origin."""
    if isinstance(ckpt, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), Mapping):
                return dict(ckpt[key])
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return dict(ckpt)
    return {}


def detect_format(ckpt: Any) -> str | None:
    """``pspnet``, ``semseg`` or ``mmseg`` from a loaded checkpoint's keys; ``None`` if none fits."""
    if isinstance(ckpt, Mapping) and "model" in ckpt and "config" in ckpt:
        return "pspnet"
    keys = [k.removeprefix("module.") for k in _state_of(ckpt)]
    if any(k.startswith(("backbone.stem.", "decode_head.")) for k in keys):
        return "mmseg"
    if any(k.startswith("layer0.") for k in keys) and any(k.startswith("cls.") for k in keys):
        return "semseg"
    if any(k.startswith("backbone.layer0.") for k in keys) and any(k.startswith("cls.") for k in keys):
        return "pspnet"
    return None


def some_keys(ckpt: Any) -> str:
    """A few key names, to show what an unrecognised checkpoint holds."""
    keys = list(_state_of(ckpt)) or (list(ckpt) if isinstance(ckpt, Mapping) else [])
    return f"keys {keys[:5]}" if keys else f"a {type(ckpt).__name__}"


# ---- key maps and shapes ---------------------------------------------------------------------------


def rename_keys(state: Mapping[str, torch.Tensor], key_map: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Apply the first matching rule of ``key_map`` to every key; unmatched keys are kept as they are."""
    out = {}
    for key, value in state.items():
        rule = next((pattern for pattern in key_map if re.match(pattern, key)), None)
        out[re.sub(rule, key_map[rule], key, count=1) if rule else key] = value
    return out


def _infer_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Depth, stem widths, class count and head widths from our key names and tensor shapes."""
    blocks = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in state if (m := re.match(rf"backbone\.layer{stage}\.(\d+)\.", k))}
        blocks.append(max(ids) + 1 if ids else 0)
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    depth = next((d for d, counts in DEPTHS.items() if list(counts) == blocks and (d >= 50) == bottleneck), None)
    if depth is None:
        raise PSPNetError(f"the backbone has {blocks} blocks per stage, which is no ResNet depth in {sorted(DEPTHS)}")
    stem = [state.get(f"backbone.layer0.{i}.weight") for i in (0, 3, 6)]
    if any(w is None for w in stem):
        raise PSPNetError("the backbone has no deep stem (3 convs at layer0.0/3/6), which this PSPNet needs")
    if "cls.4.weight" not in state or "cls.0.weight" not in state:
        raise PSPNetError("no classifier weights (cls.0 / cls.4 after renaming) in the checkpoint")
    config: dict[str, Any] = {"backbone": f"resnet{depth}", "stem_widths": [int(w.shape[0]) for w in stem],
                              "num_classes": int(state["cls.4.weight"].shape[0]),
                              "head_channels": int(state["cls.0.weight"].shape[0]), "aux": "aux.0.weight" in state}
    if config["aux"]:
        config["aux_channels"] = int(state["aux.0.weight"].shape[0])
    return config


# ---- mmseg's config text ---------------------------------------------------------------------------


def _numbers(text: str, name: str) -> list[float] | None:
    """The list or tuple assigned to ``name=`` in a config text, as floats."""
    m = re.search(rf"\b{name}\s*=\s*[\[\(]([^\]\)]*)[\]\)]", text)
    try:
        return [float(v) for v in m.group(1).split(",") if v.strip()] if m else None
    except ValueError:
        return None


def _flag(text: str, name: str) -> bool | None:
    m = re.search(rf"\b{name}\s*=\s*(True|False)", text)
    return m.group(1) == "True" if m else None


def _mmseg_settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Normalisation, colour order, align_corners, dilation and pool scales from mmseg's saved config text."""
    text = meta.get("cfg") or meta.get("config") or ""
    text = text if isinstance(text, str) else ""
    out: dict[str, Any] = {}
    mean, std = _numbers(text, "mean"), _numbers(text, "std")
    if mean and std and len(mean) == len(std) == 3:
        scale = 255.0 if max(mean) > 1.5 else 1.0  # mmseg's are in 0-255 units; ours are 0-1
        out["mean"], out["std"] = [round(v / scale, 6) for v in mean], [round(v / scale, 6) for v in std]
    for key, name in (("to_rgb", "(?:bgr_to_rgb|to_rgb)"), ("align_corners", "align_corners"),
                      ("contract_dilation", "contract_dilation")):
        if (value := _flag(text, name)) is not None:
            out[key] = value
    if scales := _numbers(text, "pool_scales"):
        out["bins"] = [int(s) for s in scales]
    return out


def _mmseg_classes(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Class names and palette from mmseg 1.x ``meta['dataset_meta']`` or 0.x ``meta['CLASSES'/'PALETTE']``."""
    dm = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    classes = dm.get("classes") or meta.get("CLASSES")
    palette = dm.get("palette") or meta.get("PALETTE")
    out: dict[str, Any] = {}
    if isinstance(classes, (list, tuple)):
        out["class_names"] = [str(c).strip() for c in classes]
    if isinstance(palette, (list, tuple)):
        out["palette"] = [[int(v) for v in c] for c in palette]
    return out


# ---- conversion ------------------------------------------------------------------------------------


def convert_state_dict(ckpt: Any, source: str | None = None, origin: str = "checkpoint"
                       ) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """The origin, our state dict and the config that shapes and the origin's recipe imply, for a semseg or
    mmseg checkpoint.

    The origin is detected from the keys; ``source`` (``semseg``/``mmseg``), when given, must agree.
    """
    fmt = detect_format(ckpt)
    if fmt not in ("semseg", "mmseg") or (source and source != fmt):
        looks = f", which look like {fmt}" if fmt else ""
        raise PSPNetError(f"{origin}: not a {source or 'semseg or mmseg'} PSPNet checkpoint "
                          f"(it has {some_keys(ckpt)}{looks})")
    raw = {k.removeprefix("module."): v for k, v in _state_of(ckpt).items()}
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise PSPNetError(f"{origin}: state_dict entries that are not tensors: {bad[:5]}")
    # Both recipes normalise RGB with ImageNet mean/std (0-255 units there, 0-1 here).
    config: dict[str, Any] = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if fmt == "semseg":
        state = rename_keys(raw, SEMSEG_KEYS)
        config.update(align_corners=True, contract_dilation=False)
    else:
        state = rename_keys(raw, MMSEG_KEYS)
        # mmseg's PSPNet recipe (configs/_base_/models/pspnet_r50-d8.py): ResNetV1c, align_corners=False;
        # the saved config text, where present, has the last word.
        meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
        config.update(align_corners=False, contract_dilation=True)
        config.update(**_mmseg_settings(meta), **_mmseg_classes(meta))
        if not config.pop("to_rgb", True):
            # The model saw BGR: flip the first conv's input channels (and mean/std) so it takes RGB like ours.
            if "backbone.layer0.0.weight" in state:
                state["backbone.layer0.0.weight"] = state["backbone.layer0.0.weight"].flip(1).contiguous()
            config["mean"], config["std"] = config["mean"][::-1], config["std"][::-1]
    try:
        config.update(_infer_architecture(state))
    except PSPNetError as err:
        raise PSPNetError(f"{origin}: {err}") from None
    return fmt, state, config
