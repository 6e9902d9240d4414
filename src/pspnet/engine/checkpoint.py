"""Atomic checkpoints with one generation kept: a crash, SIGKILL or damaged file never loses the run.

``last.pt`` is written to a temporary file, fsynced and renamed into place; the file it replaces
becomes ``last.prev.pt``. A resume that finds ``last.pt`` missing or unreadable falls back to
``last.prev.pt`` with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from pspnet.errors import PSPNetError
from pspnet.files import atomic_path
from pspnet.model.serialization import safe_torch_load

logger = logging.getLogger(__name__)

LAST = "last.pt"
PREVIOUS = "last.prev.pt"


def atomic_save(obj: Any, path: str | Path, keep_previous: bool = False) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    With ``keep_previous`` the file being replaced is kept as ``<stem>.prev<suffix>``.
    """
    path = Path(path)
    try:
        if keep_previous and path.is_file():  # a second name for the current file: last.pt never goes missing
            with atomic_path(previous_of(path)) as prev:
                prev.unlink()
                os.link(path, prev)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except OSError as err:
        raise PSPNetError(f"{path}: cannot write the checkpoint ({err.strerror or err}); free space or make the "
                          "folder writable, then continue with --resume") from err


def previous_of(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, loaded without running any code from the file."""
    path = Path(path)
    if not path.is_file():
        raise PSPNetError(f"{path}: no such checkpoint")
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "iteration" not in ckpt or "model" not in ckpt:
        raise PSPNetError(f"{path}: not a pspnet training checkpoint (no 'iteration'/'model')")
    return ckpt


def find_checkpoint(target: str | Path) -> Path:
    """The checkpoint that ``--resume TARGET`` means: a file, or a run folder's last.pt (or last.prev.pt)."""
    target = Path(target)
    if target.is_dir():
        for name in (LAST, PREVIOUS):
            if (target / name).is_file():
                return target / name
        raise PSPNetError(f"{target}: no checkpoint to resume ({LAST} or {PREVIOUS}); start without --resume, "
                          "or use --resume auto to continue if present, else start")
    if target.is_file():
        return target
    raise PSPNetError(f"{target}: no such checkpoint or run folder to resume; check the path "
                      "(--resume RUN_FOLDER or RUN_FOLDER/last.pt), or use --resume auto")


def load_with_fallback(path: str | Path) -> tuple[dict[str, Any], Path]:
    """``load_checkpoint(path)``; if it is missing or damaged and its ``.prev`` twin loads, that one, with a warning."""
    path = Path(path)
    try:
        return load_checkpoint(path), path
    except PSPNetError as err:
        previous = previous_of(path)
        if path.name == PREVIOUS or not previous.is_file():
            raise
        ckpt = load_checkpoint(previous)
        logger.warning("%s; resuming from the previous checkpoint %s (iteration %d) instead", err, previous,
                       ckpt["iteration"])
        return ckpt, previous
