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

Without ``classes``, ``num_classes``, ``palette``, ``mask_values`` or ``binary`` the classes come from
the values the masks hold (the training split's and this split's): 0/255 or 0/1 masks are two classes
(background, foreground), 0..K-1 (plus 255 = ignore) are K classes, any other few values (0/85/170/255)
are one class each in increasing order. ``dataset.mask_values`` keeps the stored value of every class so
predictions can be written back in the user's own values. A mask value that no class claims is an error
naming the values, their pixel counts and the fix; ``num_classes: 2`` on 0/255 masks makes 255 class 1,
never a silent 'ignore' (give ``ignore_index: 255`` to mean that).

Folder splits: ``images/{split}/`` + ``masks/{split}/``, or ``{split}/images/`` + ``{split}/masks/``,
or flat ``images/`` + ``masks/`` with ``splits/{split}.txt`` (or ``{split}.txt``) naming stems; the
split ``all`` takes a flat folder as it is. List files (``list`` dataset): ``image mask`` paths per
line relative to the root, as in hszhao/semseg, at ``list/{split}.txt``, ``{split}.txt`` or any path.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from pspnet.data.datasets import (IGNORE, UNKNOWN, SegmentationDataset, _is_gray, collect_problems, identity_lut,
                                  listed_pairs, paired_files, read_list, report, values_lut)
from pspnet.data.io import read_mask
from pspnet.errors import PSPNetError

logger = logging.getLogger(__name__)

OPTIONS = {"classes", "num_classes", "palette", "ignore_colours", "ignore_index", "mask_values", "binary",
           "image_dir", "mask_dir", "mask_suffix"}


def load_options(root: Path, options: dict[str, Any], extra: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """``dataset.yaml`` under ``root`` (if any) overridden by ``options``; keys outside ``OPTIONS`` and the
    builder's ``extra`` ones are an error."""
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
    unknown = sorted(set(values) - OPTIONS - set(extra))
    if unknown:
        raise PSPNetError(f"{spec if spec.is_file() else root}: unknown dataset options {unknown}; "
                          f"known: {sorted(OPTIONS | set(extra))}")
    return values


MAX_AUTO_VALUES = 32  # more distinct values than this is an intensity image or a lossy (JPEG) mask, not labels
_HIST_CACHE: dict[tuple[str, int, int], tuple[dict[int, int], bool]] = {}


def _mask_histogram(path: Path) -> tuple[dict[int, int], bool]:
    """Pixel count per stored value of one mask, and whether it is a colour (RGB) mask; cached per file."""
    try:
        st = path.stat()
    except OSError:
        return {}, False
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _HIST_CACHE:
        try:
            raw = read_mask(path)
        except PSPNetError:
            return {}, False  # unreadable: check-data and __getitem__ name the file
        if raw.ndim == 3 and not _is_gray(raw):
            _HIST_CACHE[key] = ({}, True)  # colours: the palette option maps them, per file
        else:
            values, counts = np.unique(raw[..., 0] if raw.ndim == 3 else raw, return_counts=True)
            _HIST_CACHE[key] = (dict(zip(values.tolist(), counts.tolist())), False)
    return _HIST_CACHE[key]


Histogram = tuple[dict[int, int], bool, dict[int, list[str]]]
WHERE_KEEP = 3  # files named per value in messages


def mask_histogram(pairs: Sequence[tuple[Path, Path | None]], workers: int = 4) -> Histogram:
    """Pixels per stored mask value over all ``pairs`` (threads: PNG decoding releases the GIL), whether
    any mask is a colour (RGB) mask, and the first few masks holding each value."""
    total: Counter[int] = Counter()
    where: dict[int, list[str]] = {}
    colour = False
    masks = [m for _, m in pairs if m is not None]
    with ThreadPoolExecutor(max(1, min(workers, len(masks)))) as pool:
        for mask, (hist, is_colour) in zip(masks, pool.map(lambda m: _mask_histogram(Path(m)), masks)):
            total.update(hist)
            colour |= is_colour
            for v in hist:
                if len(where.setdefault(v, [])) < WHERE_KEEP:
                    where[v].append(str(mask))
    return dict(sorted(total.items())), colour, where


def _counts(values: Sequence[int], hist: dict[int, int]) -> str:
    return ", ".join(f"{v}: {hist[v]} px" for v in values)


def detect_classes(hist: dict[int, int], ignore: Sequence[int], ignore_given: bool, root: Path) -> list[int]:
    """The stored value of each class, from the values found in the masks (no class options given).

    0/255 and 0/1 masks are two classes; values 0..K-1 (plus the ignore value) are K classes; any other
    small set of values (0/85/170/255) is one class per value, in increasing order.
    """
    values = [v for v in hist if not (ignore_given and v in ignore)]
    if not values:
        raise PSPNetError(f"{root}: no mask values found to detect the classes from; say how many classes there "
                          "are: num_classes, classes or palette (as options or in dataset.yaml)")
    if not ignore_given and set(values) <= {0, 255} and len(values) == 2:
        return [0, 255]
    if set(values) <= {0, 1} and len(values) == 2:
        return [0, 1]
    labels = [v for v in values if v not in ignore]
    if len(labels) >= 2 and labels == list(range(len(labels))):
        return labels
    if len(values) < 2:
        raise PSPNetError(f"{root}: every mask holds only the value {values[0]} ({hist[values[0]]} px): one class "
                          "is not a segmentation task; say how many classes there are (num_classes or classes)")
    if len(values) > MAX_AUTO_VALUES:
        raise PSPNetError(f"{root}: the masks hold {len(values)} different values ({values[0]}..{values[-1]}), too "
                          "many to be class labels: lossy (JPEG) 0/255 masks need binary: true; otherwise list the "
                          "stored value of every class with mask_values: [...]")
    return values


def _dataset(pairs: list, root: Path, opts: dict[str, Any], transform: Callable | None,
             train_pairs: list | None = None, workers: int = 4,
             histogram: Callable[[list, int], Histogram] | None = None,
             make: Callable[..., SegmentationDataset] = SegmentationDataset) -> SegmentationDataset:
    """Classes, label table and colour map from the options, or from the mask values when none are given.

    Mask values that no class claims are a ``bad_labels`` problem naming the values, their pixel counts
    and the fix, found here (before training starts), not at the first batch that holds one.
    """
    ignore_given = opts.get("ignore_index") is not None
    ignore = opts.get("ignore_index", IGNORE)
    ignore = [int(v) for v in ignore] if isinstance(ignore, (list, tuple)) else [int(ignore)]
    names = opts.get("classes")
    palette = opts.get("palette")
    binary = bool(opts.get("binary", False))
    histogram = histogram or mask_histogram
    hist, colour, where = histogram(pairs, workers)
    # the classes of every split come from the training masks too, so val and train agree
    known = hist if train_pairs is None else {**histogram(train_pairs, workers)[0], **hist}
    mask_values: list[int] | None = None
    if binary:
        num_classes = 2
        names = names or ["background", "foreground"]
        mask_values = [0, 1] if known and max(known) <= 1 else [0, 255]
    elif opts.get("mask_values") is not None:
        mask_values = [int(v) for v in opts["mask_values"]]
        num_classes = len(mask_values)
    elif names or opts.get("num_classes") or palette:
        num_classes = len(names) if names else int(opts["num_classes"]) if opts.get("num_classes") else len(palette)
        found = sorted(known)
        if (not ignore_given and not colour and len(found) == num_classes and IGNORE in found
                and not set(found) <= set(range(num_classes))):
            # num_classes=2 on 0/255 masks: 255 is a class here, not 'ignore' (set ignore_index to say otherwise)
            mask_values = found
            logger.info("%s: %d classes with mask values %s (value %d is class %d; set ignore_index: %d to ignore "
                        "it instead)", root, num_classes, found, IGNORE, num_classes - 1, IGNORE)
    elif colour:
        raise PSPNetError(f"{root}: the masks are colour (RGB) images: give the colour of every class with "
                          "palette: [[r, g, b], ...] (as an option or in dataset.yaml)")
    else:
        mask_values = detect_classes(known, ignore, ignore_given, root)
        num_classes = len(mask_values)
        if mask_values in ([0, 255], [0, 1]):
            names = ["background", "foreground"]
        logger.info("%s: %d classes detected from the mask values %s", root, num_classes, mask_values)
    if names and len(names) != num_classes:
        raise PSPNetError(f"{root}: {len(names)} class names for {num_classes} classes")
    if palette and len(palette) != num_classes:
        raise PSPNetError(f"{root}: {len(palette)} palette colours for {num_classes} classes")
    if mask_values is not None and not binary:
        if len(set(mask_values)) != len(mask_values):
            raise PSPNetError(f"{root}: mask_values {mask_values} repeat a value")
        lut = values_lut(mask_values, [v for v in ignore if v not in mask_values])
    else:
        lut = identity_lut(num_classes, size=max(256, num_classes + 1, *(i + 1 for i in ignore)), ignore=ignore)
    if not binary and not colour:
        unclaimed = [v for v in hist if v >= len(lut) or v < 0 or lut[v] == UNKNOWN]
        if unclaimed:
            claimed = mask_values if mask_values is not None else list(range(num_classes))
            suggestion = sorted(set(claimed) | set(unclaimed))
            files = sorted({f for v in unclaimed for f in where.get(v, [])})
            report("unclaimed_values", files[0] if files else root,
                   f"label values {unclaimed[:20]} are outside the class set: no class claims them "
                   f"(pixels: {_counts(unclaimed[:20], hist)}"
                   + (f"; also in {', '.join(Path(f).name for f in files[1:])}" if len(files) > 1 else "")
                   + f"); the {num_classes} classes are stored as {claimed}"
                   + (f" and {ignore} means ignore" if ignore else "")
                   + f". Fix: give the stored value of every class, e.g. mask_values: {suggestion}"
                   + (", or binary: true (values > 127 are class 1)" if len(suggestion) <= 3 else "")
                   + ", or ignore_index: [...] for values to leave out")
    ds = make(pairs, num_classes, lut, names, palette, transform, root, colours=palette,
              ignore_colours=opts.get("ignore_colours") or (), binary=binary)
    ds.mask_values = mask_values if mask_values is not None else list(range(num_classes))
    return ds


def to_stored_values(labels: np.ndarray, mask_values: Sequence[int] | None) -> np.ndarray:
    """Class ids -> the user's own mask values (``mask_values[i]`` for class i; 0/1 -> 0/255 for binary
    masks), uint8 when they fit, else uint16; ids unchanged when ``mask_values`` is None."""
    labels = np.asarray(labels)
    if mask_values is None:
        return labels
    table = np.asarray(mask_values, dtype=np.int64)
    if labels.size and (labels.max() >= len(table) or labels.min() < 0):
        raise PSPNetError(f"class ids up to {int(labels.max())} but only {len(table)} mask_values {table.tolist()}")
    dtype = np.uint8 if table.min(initial=0) >= 0 and table.max(initial=0) < 256 else np.uint16
    return table.astype(dtype)[labels]


def _quiet_pairs(find: Callable[[], list]) -> list | None:
    """Pairs of another split for class detection; its problems belong to that split's own check."""
    with collect_problems():
        try:
            return find()
        except PSPNetError:
            return None


def _folder_pairs(root: Path, split: str, opts: dict[str, Any]) -> list:
    img, msk, suffix = opts.get("image_dir", "images"), opts.get("mask_dir", "masks"), opts.get("mask_suffix", "")
    if (root / img / split).is_dir():
        return paired_files(root / img / split, root / msk / split, suffix)
    if (root / split / img).is_dir():
        return paired_files(root / split / img, root / split / msk, suffix)
    list_file = next((p for p in (root / "splits" / f"{split}.txt", root / f"{split}.txt") if p.is_file()), None)
    if list_file is not None:
        lines = read_list(list_file)
        if lines and len(lines[0]) == 2:
            return listed_pairs(list_file, root)
        return paired_files(root / img, root / msk, suffix, keep={line[0] for line in lines})
    if split == "all":
        return paired_files(root / img, root / msk, suffix)
    raise PSPNetError(f"{root}: no split {split!r}: expected {img}/{split}/ + {msk}/{split}/, "
                      f"{split}/{img}/ + {split}/{msk}/, or splits/{split}.txt (use split 'all' for a "
                      "flat folder)")


def folder(root: str | Path, split: str = "train", transform: Callable | None = None,
           **options: Any) -> SegmentationDataset:
    """``images/`` + ``masks/`` with matching stems, index PNGs or RGB masks (see the module docstring)."""
    root = Path(root)
    opts = load_options(root, options)
    pairs = _folder_pairs(root, split, opts)
    train = None if split == "train" else _quiet_pairs(lambda: _folder_pairs(root, "train", opts))
    return _dataset(pairs, root, opts, transform, train)


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
    train_list = next((p for p in (root / "list" / "train.txt", root / "lists" / "train.txt", root / "train.txt")
                       if p.is_file()), None)
    train = None if train_list is None or train_list == list_file else _quiet_pairs(
        lambda: listed_pairs(train_list, root))
    return _dataset(pairs, root, opts, transform, train)
