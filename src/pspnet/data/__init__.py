"""Datasets, transforms and image I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pspnet.data.datasets import SegmentationDataset, camvid
from pspnet.errors import PSPNetError

# name -> builder(root, split, transform); the data issue adds the other standard layouts here.
DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "camvid": camvid,
}


def build_dataset(name: str, root: str | Path, split: str, transform: Callable | None = None) -> SegmentationDataset:
    """A dataset by its layout name (see ``DATASETS``), rooted at ``root``."""
    if name not in DATASETS:
        raise PSPNetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if not Path(root).exists():
        raise PSPNetError(f"{root}: dataset root does not exist")
    return DATASETS[name](root, split, transform)
