"""Atomic checkpoints: a crash or SIGKILL during a save never damages the last good file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pspnet.errors import PSPNetError
from pspnet.model.serialization import safe_torch_load


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, loaded without running any code from the file."""
    path = Path(path)
    if not path.is_file():
        raise PSPNetError(f"{path}: no such checkpoint")
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "iteration" not in ckpt or "model" not in ckpt:
        raise PSPNetError(f"{path}: not a pspnet training checkpoint (no 'iteration'/'model')")
    return ckpt
