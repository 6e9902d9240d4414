"""Your own data: a folder of ``images/`` + ``masks/`` with matching stems, or semseg-style list files.

Options come as keyword arguments or from ``dataset.yaml`` in the dataset root (arguments win):

    classes: [road, car, ...]      class names; their number is the number of classes
    num_classes: 3                 when there are no names
    palette: [[r, g, b], ...]      display colours; for RGB masks also the colour map (colour i = class i)
    ignore_colours: [[r, g, b]]    RGB mask colours to ignore
    ignore_index: 255              stored value(s) that mean 'ignore' (default 255)
    mask_values: [0, 255]          stored value of class 0, 1, ...: medical/binary masks saved as 0/255
    binary: true                   two classes from any mask: values > 127 (or 1 where a mask's maximum
                                   is 1) are foreground; robust to JPEG-compressed 0/255 masks
    image_dir: images              folder names and a mask name suffix (``x.jpg`` <-> ``x_mask.png``)
    mask_dir: masks
    mask_suffix: ""

Folder splits: ``images/{split}/`` + ``masks/{split}/``, or ``{split}/images/`` + ``{split}/masks/``,
or flat ``images/`` + ``masks/`` with ``splits/{split}.txt`` (or ``{split}.txt``) naming stems; the
split ``all`` takes a flat folder as it is. List files (``list`` dataset): ``image mask`` paths per
line relative to the root, as in hszhao/semseg, at ``list/{split}.txt``, ``{split}.txt`` or any path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from pspnet.data.datasets import (IGNORE, SegmentationDataset, identity_lut, listed_pairs, paired_files, read_list,
                                  report, values_lut)
from pspnet.errors import PSPNetError

OPTIONS = {"classes", "num_classes", "palette", "ignore_colours", "ignore_index", "mask_values", "binary",
           "image_dir", "mask_dir", "mask_suffix"}


def load_options(root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """``dataset.yaml`` under ``root`` (if any) overridden by ``options``; unknown keys are an error."""
    values: dict[str, Any] = {}
    spec = root / "dataset.yaml"
    if spec.is_file():
        try:
            values = yaml.safe_load(spec.read_text()) or {}
        except yaml.YAMLError as err:
            raise PSPNetError(f"{spec}: not valid YAML ({err})") from err
        if not isinstance(values, dict):
            raise PSPNetError(f"{spec}: expected a mapping of options")
    values.update({k: v for k, v in options.items() if v is not None})
    unknown = sorted(set(values) - OPTIONS)
    if unknown:
        raise PSPNetError(f"{spec if spec.is_file() else root}: unknown dataset options {unknown}; "
                          f"known: {sorted(OPTIONS)}")
    return values


def _dataset(pairs: list, root: Path, opts: dict[str, Any], transform: Callable | None) -> SegmentationDataset:
    """Classes, label table and colour map from the options."""
    ignore = opts.get("ignore_index", IGNORE)
    ignore = list(ignore) if isinstance(ignore, (list, tuple)) else [ignore]
    names = opts.get("classes")
    palette = opts.get("palette")
    binary = bool(opts.get("binary", False))
    if binary:
        num_classes = 2
        names = names or ["background", "foreground"]
    elif opts.get("mask_values") is not None:
        num_classes = len(opts["mask_values"])
    elif names:
        num_classes = len(names)
    elif opts.get("num_classes"):
        num_classes = int(opts["num_classes"])
    elif palette:
        num_classes = len(palette)
    else:
        raise PSPNetError(f"{root}: say how many classes there are: num_classes, classes or palette "
                          "(as options or in dataset.yaml)")
    if names and len(names) != num_classes:
        raise PSPNetError(f"{root}: {len(names)} class names for {num_classes} classes")
    if palette and len(palette) != num_classes:
        raise PSPNetError(f"{root}: {len(palette)} palette colours for {num_classes} classes")
    if opts.get("mask_values") is not None:
        lut = values_lut([int(v) for v in opts["mask_values"]], ignore)
    else:
        lut = identity_lut(num_classes, size=max(256, num_classes + 1, *(i + 1 for i in ignore)), ignore=ignore)
    return SegmentationDataset(pairs, num_classes, lut, names, palette, transform, root, colours=palette,
                               ignore_colours=opts.get("ignore_colours") or (), binary=binary)


def folder(root: str | Path, split: str = "train", transform: Callable | None = None,
           **options: Any) -> SegmentationDataset:
    """``images/`` + ``masks/`` with matching stems, index PNGs or RGB masks (see the module docstring)."""
    root = Path(root)
    opts = load_options(root, options)
    img, msk, suffix = opts.get("image_dir", "images"), opts.get("mask_dir", "masks"), opts.get("mask_suffix", "")
    if (root / img / split).is_dir():
        pairs = paired_files(root / img / split, root / msk / split, suffix)
    elif (root / split / img).is_dir():
        pairs = paired_files(root / split / img, root / split / msk, suffix)
    else:
        list_file = next((p for p in (root / "splits" / f"{split}.txt", root / f"{split}.txt") if p.is_file()), None)
        if list_file is not None:
            lines = read_list(list_file)
            if lines and len(lines[0]) == 2:
                pairs = listed_pairs(list_file, root)
            else:
                pairs = paired_files(root / img, root / msk, suffix, keep={line[0] for line in lines})
        elif split == "all":
            pairs = paired_files(root / img, root / msk, suffix)
        else:
            raise PSPNetError(f"{root}: no split {split!r}: expected {img}/{split}/ + {msk}/{split}/, "
                              f"{split}/{img}/ + {split}/{msk}/, or splits/{split}.txt (use split 'all' for a "
                              "flat folder)")
    return _dataset(pairs, root, opts, transform)


def list_dataset(root: str | Path, split: str = "train", transform: Callable | None = None,
                 **options: Any) -> SegmentationDataset:
    """semseg-style list files: ``image mask`` per line, relative to ``root``; ``split`` names the list."""
    root = Path(root)
    opts = load_options(root, options)
    candidates = [Path(split), root / split, root / "list" / f"{split}.txt", root / "lists" / f"{split}.txt",
                  root / f"{split}.txt"]
    list_file = next((p for p in candidates if p.is_file()), None)
    if list_file is None:
        report("layout", root, f"no list file for split {split!r} (looked for list/{split}.txt and {split}.txt)")
        pairs = []
    else:
        pairs = listed_pairs(list_file, root)
    return _dataset(pairs, root, opts, transform)
