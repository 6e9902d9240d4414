"""Datasets, transforms and image I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pspnet.data.custom import folder, list_dataset
from pspnet.data.datasets import (SegmentationDataset, ade20k, build_split, camvid, cityscapes, coco_stuff,
                                  collect_problems, voc)
from pspnet.data.medical import medical_folder
from pspnet.errors import PSPNetError

# name -> builder(root, split, transform, **options); only ``folder``, ``list`` and ``medical`` take options.
DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "camvid": camvid,
    "voc": voc,
    "voc2012": voc,
    "cityscapes": cityscapes,
    "ade20k": ade20k,
    "coco_stuff": coco_stuff,
    "coco-stuff": coco_stuff,
    "folder": folder,
    "list": list_dataset,
    "medical": medical_folder,  # DICOM/NIfTI slices; needs pip install 'pspnet[medical]'
}
TAKES_OPTIONS = {"folder", "list", "medical"}
# options every layout takes: hold out whole sequences (see ``datasets.build_split``)
SEQUENCE_OPTIONS = ("holdout_sequences", "holdout_from", "holdout_tails", "sequence_pattern")


def build_dataset(name: str, root: str | Path, split: str, transform: Callable | None = None,
                  **options: Any) -> SegmentationDataset:
    """A dataset by its layout name (see ``DATASETS``), rooted at ``root``.

    ``split`` may join splits (``train+val``) or be ``holdout`` with ``holdout_sequences`` (see ``build_split``).
    """
    if name not in DATASETS:
        raise PSPNetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if not Path(root).exists():
        raise PSPNetError(f"{root}: dataset root does not exist")
    options = {k: v for k, v in options.items() if v is not None}
    sequence_options = {k: options.pop(k) for k in SEQUENCE_OPTIONS if k in options}
    if options and name not in TAKES_OPTIONS:
        raise PSPNetError(f"dataset {name!r} has a fixed layout and takes no options (got {sorted(options)}); "
                          f"options are for {sorted(TAKES_OPTIONS)}")
    return build_split(lambda s: DATASETS[name](root, s, transform, **options), split, **sequence_options)


__all__ = ["DATASETS", "SEQUENCE_OPTIONS", "SegmentationDataset", "build_dataset", "collect_problems"]
