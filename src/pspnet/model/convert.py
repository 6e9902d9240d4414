"""Load weights files of any supported origin into a PSPNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pspnet.errors import PSPNetError
from pspnet.model.pspnet import PSPNet, build_with_state, load_safetensors


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` that never runs code from the file: anything but tensors and containers is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for code, RuntimeError/EOFError for damage
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise PSPNetError(f"{path}: refused to load, the pickle asks to run code or build objects other than "
                              f"tensors ({str(err).splitlines()[0][:200]}). Only load checkpoints you trust; "
                              "pspnet never unpickles arbitrary objects.") from err
        raise PSPNetError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err


def load_weights_file(path: str | Path, **overrides: Any) -> PSPNet:
    """A .safetensors file or a pspnet training checkpoint (.pth/.pt)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise PSPNetError(f"{path}: file is empty (0 bytes)")
    if path.suffix == ".safetensors":
        return load_safetensors(path, **overrides)
    ckpt = safe_torch_load(path)
    if isinstance(ckpt, dict) and "model" in ckpt and "config" in ckpt:
        config = {**ckpt["config"], **overrides, "pretrained_backbone": False}
        return build_with_state(config, ckpt["model"], str(path))
    raise PSPNetError(f"{path}: not a pspnet checkpoint (expected keys 'model' and 'config')")
