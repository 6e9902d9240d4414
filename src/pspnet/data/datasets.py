"""Segmentation datasets in their real on-disk layouts, all yielding (image, mask) tensors.

Every dataset is a list of (image, mask) file pairs plus a lookup table from stored label values to
train ids (255 = ignore). Values the table does not know raise an error naming the file.

Layout problems (a missing mask, an empty folder) raise ``PSPNetError`` at once, except inside
``collect_problems()``, where they are recorded and the builder carries on: that is how
``pspnet check-data`` reports every problem of a dataset in one pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from pspnet.data.io import list_images, open_image, read_image, read_mask
from pspnet.meta import (ADE20K_CLASSES, ADE20K_PALETTE, CAMVID_CLASSES, CAMVID_PALETTE, CITYSCAPES_CLASSES,
                         CITYSCAPES_PALETTE, COCO_STUFF_CLASSES, VOC_CLASSES, default_class_names)
from pspnet.errors import PSPNetError

IGNORE = 255
UNKNOWN = -1  # marks stored values that are not allowed in a lookup table


# ---- problems: raise now, or collect them all -------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: ``kind`` groups the report, ``path`` names the file or folder."""

    kind: str  # missing_mask, missing_image, size_mismatch, bad_labels, unreadable, empty, layout
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


_PROBLEMS: contextvars.ContextVar[list[Problem] | None] = contextvars.ContextVar("pspnet_problems", default=None)


@contextlib.contextmanager
def collect_problems() -> Iterator[list[Problem]]:
    """Inside this block, dataset builders record layout problems in the yielded list instead of raising."""
    problems: list[Problem] = []
    token = _PROBLEMS.set(problems)
    try:
        yield problems
    finally:
        _PROBLEMS.reset(token)


def report(kind: str, path: str | Path, message: str) -> None:
    """Raise the problem, or record it when a ``collect_problems()`` block is active."""
    problems = _PROBLEMS.get()
    if problems is None:
        raise PSPNetError(f"{path}: {message}")
    problems.append(Problem(kind, str(path), message))


# ---- label tables -----------------------------------------------------------------------------------------------

def identity_lut(num_classes: int, size: int = 256, ignore: Sequence[int] = (IGNORE,)) -> np.ndarray:
    """Values 0..num_classes-1 map to themselves, ``ignore`` values to 255, anything else is an error."""
    lut = np.full(size, UNKNOWN, dtype=np.int64)
    lut[:num_classes] = np.arange(num_classes)
    for v in ignore:
        lut[v] = IGNORE
    return lut


def values_lut(values: Sequence[int], ignore: Sequence[int] = (), size: int = 256) -> np.ndarray:
    """Stored ``values[i]`` -> class i (e.g. medical masks saved as 0/85/170/255), ``ignore`` -> 255."""
    size = max(size, max(list(values) + list(ignore) + [0]) + 1)
    lut = np.full(size, UNKNOWN, dtype=np.int64)
    for v in ignore:
        lut[v] = IGNORE
    for i, v in enumerate(values):
        lut[v] = i
    return lut


# Cityscapes labelIds (gtFine/*_labelIds.png) -> the 19 evaluated trainIds, everything else ignored.
CITYSCAPES_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def cityscapes_lut() -> np.ndarray:
    lut = np.full(256, UNKNOWN, dtype=np.int64)
    lut[:34] = IGNORE  # ids 0-33 exist; the 15 not evaluated (void, parking, caravan, ...) are ignored
    lut[IGNORE] = IGNORE
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


# COCO-Stuff stuffthingmaps store COCO id - 1 (0..181); these 11 ids have no class (COCO dropped them).
COCO_STUFF_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def coco_stuff_lut() -> np.ndarray:
    lut = np.full(256, UNKNOWN, dtype=np.int64)
    used = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
    lut[used] = np.arange(len(used))
    lut[list(COCO_STUFF_UNUSED)] = IGNORE
    lut[IGNORE] = IGNORE
    return lut


# ---- the dataset --------------------------------------------------------------------------------------------------

class SegmentationDataset(Dataset):
    """Image/mask pairs with a label lookup table and a joint transform.

    ``colours`` (K x 3) makes RGB masks legal: pixel colour ``colours[i]`` is class i, colours in
    ``ignore_colours`` are ignored. ``binary`` turns any mask into 0/1 (values > 127 are foreground,
    or 1 when a mask's maximum is 1) for 0/255 and JPEG-compressed masks. ``mask_values[i]`` is the
    value class i has in the user's own mask files (custom datasets), so predictions can be written back
    in those values; None for the standard layouts.
    """

    mask_values: list[int] | None = None

    def __init__(self, pairs: Sequence[tuple[Path, Path | None]], num_classes: int, lut: np.ndarray,
                 class_names: Sequence[str] | None = None, palette: Sequence[Sequence[int]] | None = None,
                 transform: Callable | None = None, root: Path | None = None,
                 colours: Sequence[Sequence[int]] | None = None, ignore_colours: Sequence[Sequence[int]] = (),
                 binary: bool = False):
        if not pairs:
            report("empty", root or "dataset", "no image/mask pairs found")
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.lut = lut
        self.class_names = list(class_names) if class_names else default_class_names(num_classes)
        self.palette = palette
        self.transform = transform
        self.root = root
        self.colours = [tuple(c) for c in colours] if colours else None
        self.ignore_colours = [tuple(c) for c in ignore_colours]
        self.binary = binary

    def __len__(self) -> int:
        return len(self.pairs)

    def _rgb_to_ids(self, rgb: np.ndarray, mask_path: Path) -> np.ndarray:
        code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        ids = np.full(code.shape, UNKNOWN, dtype=np.int64)
        for i, (r, g, b) in enumerate(self.colours or []):
            ids[code == (r << 16 | g << 8 | b)] = i
        for r, g, b in self.ignore_colours:
            ids[code == (r << 16 | g << 8 | b)] = IGNORE
        if (ids == UNKNOWN).any():
            bad = np.unique(code[ids == UNKNOWN])[:10]
            colours = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in bad.tolist()]
            raise PSPNetError(f"{mask_path}: colours {colours} are not in the dataset's colour map "
                              f"({len(self.colours or [])} class colours)")
        return ids

    def _class_set(self) -> str:
        if self.mask_values is not None and self.mask_values != list(range(self.num_classes)):
            return f"stored values {self.mask_values}"
        return f"0..{self.num_classes - 1} and {IGNORE} for ignore"

    def load_mask(self, index: int) -> np.ndarray:
        """The mask of pair ``index`` as train ids (uint8, 255 = ignore), validated."""
        image_path, mask_path = self.pairs[index]
        if mask_path is None:
            raise PSPNetError(f"{image_path}: image has no mask")
        return self.mask_to_ids(read_mask(mask_path), mask_path)

    def mask_to_ids(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        """Stored mask values (or colours) -> train ids; values outside the class set name the file."""
        if self.binary:
            if raw.ndim == 3:
                raw = raw.max(-1)
            return (raw > (0 if raw.max() == 1 else 127)).astype(np.uint8)
        if raw.ndim == 3 and self.colours is None and _is_gray(raw):
            raw = raw[..., 0]  # a grayscale mask saved as RGB
        if raw.ndim == 3:
            if self.colours is None:
                raise PSPNetError(f"{mask_path}: RGB mask, but this dataset expects single-channel label ids "
                                  "(give a colour map: palette: [[r, g, b], ...] in dataset.yaml)")
            return self._rgb_to_ids(raw, mask_path).astype(np.uint8)
        raw = raw.astype(np.int64)
        if raw.size and (raw.max() >= len(self.lut) or raw.min() < 0):
            bad = np.unique(raw[(raw >= len(self.lut)) | (raw < 0)])
            raise PSPNetError(f"{mask_path}: label values {bad.tolist()[:20]} are outside the class set "
                              f"({self._class_set()})")
        ids = self.lut[raw]
        if (ids == UNKNOWN).any():
            bad = np.unique(raw[ids == UNKNOWN])
            raise PSPNetError(f"{mask_path}: label values {bad.tolist()[:20]} are outside the class set "
                              f"({self._class_set()})")
        return ids.astype(np.uint8)

    def read_raw_mask(self, index: int) -> np.ndarray:
        """The stored mask of pair ``index`` before the label table (what check-data validates)."""
        return read_mask(self.pairs[index][1])

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of image ``index``, decoding it fully so corrupt files are found."""
        return open_image(self.pairs[index][0]).size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = self.load_mask(index)
        if mask.shape != (image.height, image.width):
            raise PSPNetError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} "
                              f"is {image.width}x{image.height}")
        img = tv_tensors.Image(TF.pil_to_tensor(image))
        msk = tv_tensors.Mask(torch.from_numpy(mask)[None])
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)[0].long()


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


# ---- pairing files ------------------------------------------------------------------------------------------------

def match_pairs(images: dict, masks: dict, where: Path) -> list[tuple[Path, Path]]:
    """Pairs for keys present in both dicts; unmatched files are reported (each one when collecting)."""
    no_mask = sorted(str(images[k]) for k in images.keys() - masks.keys())
    no_image = sorted(str(masks[k]) for k in masks.keys() - images.keys())
    if _PROBLEMS.get() is not None:
        for p in no_mask:
            report("missing_mask", p, "image has no mask")
        for p in no_image:
            report("missing_image", p, "mask has no image")
    elif no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} images without a mask (e.g. {no_mask[0]})")
        if no_image:
            parts.append(f"{len(no_image)} masks without an image (e.g. {no_image[0]})")
        raise PSPNetError(f"{where}: " + "; ".join(parts))
    return [(images[k], masks[k]) for k in sorted(images.keys() & masks.keys())]


def _strip(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


def paired_files(image_dir: Path, mask_dir: Path, mask_suffix: str = "", image_suffix: str = "",
                 keep: set[str] | None = None) -> list[tuple[Path, Path]]:
    """Match images to masks by relative path and file stem (minus ``*_suffix``); unmatched files are an error.

    ``keep`` restricts the pairing to these stems (a split list over one shared folder).
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for folder, what in ((image_dir, "image"), (mask_dir, "mask")):
        if not folder.is_dir():
            report("layout", folder, f"{what} folder does not exist")
            return []

    def index(folder: Path, suffix: str) -> dict[Path, Path]:
        out = {}
        for p in list_images(folder):
            key = p.relative_to(folder).with_suffix("")
            key = key.with_name(_strip(key.name, suffix))
            if keep is None or key.name in keep:
                out[key] = p
        return out

    images, masks = index(image_dir, image_suffix), index(mask_dir, mask_suffix)
    if not images:
        report("empty", image_dir, "folder has no images" + (" from the split list" if keep is not None else ""))
        return []
    return match_pairs(images, masks, image_dir.parent)


def read_list(path: Path) -> list[list[str]]:
    """Non-empty, non-comment lines of a split/list file, split on whitespace."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise PSPNetError(f"{path}: cannot read the list file ({err})") from err
    return [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def listed_pairs(list_file: Path, base: Path, image_pattern: str | None = None,
                 mask_pattern: str | None = None) -> list[tuple[Path, Path]]:
    """Pairs from a list file: ``image mask`` lines relative to ``base`` (semseg), or one id per line
    filled into ``image_pattern``/``mask_pattern`` (VOC's ImageSets). Missing files are reported."""
    if not list_file.is_file():
        report("layout", list_file, "split list file does not exist")
        return []
    pairs = []
    for n, parts in enumerate(read_list(list_file), 1):
        if len(parts) == 2:
            image, mask = base / parts[0].lstrip("/"), base / parts[1].lstrip("/")
        elif len(parts) == 1 and image_pattern and mask_pattern:
            image, mask = base / image_pattern.format(parts[0]), base / mask_pattern.format(parts[0])
        else:
            report("layout", f"{list_file}:{n}", f"expected 'image mask' paths, got {' '.join(parts)!r}")
            continue
        ok = True
        if not image.is_file():
            report("missing_image", image, f"listed in {list_file.name} line {n} but does not exist")
            ok = False
        if not mask.is_file():
            report("missing_mask", mask, f"listed in {list_file.name} line {n} but does not exist")
            ok = False
        if ok:
            pairs.append((image, mask))
    return pairs


def _first_dir(candidates: Sequence[Path], marker: str) -> Path:
    """The first candidate folder that contains ``marker`` (so users may point at either level)."""
    for c in candidates:
        if (c / marker).exists():
            return c
    return candidates[0]


def _split_name(split: str, names: dict[str, str], dataset: str) -> str:
    if split in names.values():
        return split
    if split not in names:
        raise PSPNetError(f"{dataset} split must be one of {sorted(names)}, got {split!r}")
    return names[split]


# ---- the standard layouts -----------------------------------------------------------------------------------------

def camvid(root: str | Path, split: str = "train", transform: Callable | None = None) -> SegmentationDataset:
    """CamVid in the SegNet layout: ``{split}/`` frames and ``{split}annot/`` maps, 11 classes, 11 = void."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise PSPNetError(f"CamVid split must be train, val or test, got {split!r}")
    pairs = paired_files(root / split, root / f"{split}annot")
    return SegmentationDataset(pairs, 11, identity_lut(11, ignore=(11, IGNORE)), CAMVID_CLASSES, CAMVID_PALETTE,
                               transform, root)


def voc(root: str | Path, split: str = "train", transform: Callable | None = None) -> SegmentationDataset:
    """Pascal VOC 2012: ``JPEGImages/``, palette PNGs in ``SegmentationClass/`` (255 = border, ignored),
    split ids in ``ImageSets/Segmentation/{split}.txt``.

    ``train_aug`` is the SBD-augmented set (10,582 images): masks from ``SegmentationClassAug/`` (the
    usual PNG conversion of SBD) listed in ``ImageSets/Segmentation/train_aug.txt`` (ids, or semseg's
    ``JPEGImages/x.jpg SegmentationClassAug/x.png`` lines). ``root`` may be VOC2012, VOCdevkit or above.
    """
    root = Path(root)
    base = _first_dir([root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"], "JPEGImages")
    sets = base / "ImageSets" / "Segmentation"
    mask_dir = "SegmentationClass"
    list_file = sets / f"{split}.txt"
    if split in ("train_aug", "trainaug", "aug"):
        mask_dir = "SegmentationClassAug"
        list_file = next((p for p in (sets / "train_aug.txt", sets / "trainaug.txt") if p.is_file()), list_file)
    pairs = listed_pairs(list_file, base, "JPEGImages/{}.jpg", mask_dir + "/{}.png")
    return SegmentationDataset(pairs, 21, identity_lut(21), VOC_CLASSES, None, transform, base)


def cityscapes(root: str | Path, split: str = "train", transform: Callable | None = None) -> SegmentationDataset:
    """Cityscapes fine: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
    ``gtFine/{split}/{city}/*_gtFine_labelIds.png``; the 34 label ids map to the 19 train ids."""
    root = Path(root)
    split = _split_name(split, {"train": "train", "val": "val", "test": "test"}, "Cityscapes")
    image_dir, mask_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            report("layout", folder, "folder does not exist (expected the Cityscapes leftImg8bit/ and gtFine/ layout)")
    images = {_strip(p.stem, "_leftImg8bit"): p for p in list_images(image_dir) if p.stem.endswith("_leftImg8bit")}
    masks = {_strip(p.stem, "_gtFine_labelIds"): p for p in list_images(mask_dir)
             if p.stem.endswith("_gtFine_labelIds")}
    if image_dir.is_dir() and not images:
        report("empty", image_dir, "no *_leftImg8bit.png images")
    pairs = match_pairs(images, masks, root) if images else []
    return SegmentationDataset(pairs, 19, cityscapes_lut(), CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, transform, root)


def ade20k(root: str | Path, split: str = "train", transform: Callable | None = None) -> SegmentationDataset:
    """ADE20K SceneParsing (ADEChallengeData2016): ``images/{training,validation}/*.jpg`` and
    ``annotations/.../*.png``; value v is class v-1 (150 classes), 0 ('other') is ignored."""
    root = Path(root)
    base = _first_dir([root, root / "ADEChallengeData2016"], "annotations")
    split = _split_name(split, {"train": "training", "val": "validation"}, "ADE20K")
    lut = np.full(256, UNKNOWN, dtype=np.int64)
    lut[0] = IGNORE
    lut[1:151] = np.arange(150)
    pairs = paired_files(base / "images" / split, base / "annotations" / split)
    return SegmentationDataset(pairs, 150, lut, ADE20K_CLASSES, ADE20K_PALETTE, transform, base)


def coco_stuff(root: str | Path, split: str = "train", transform: Callable | None = None) -> SegmentationDataset:
    """COCO-Stuff 164k: ``images/{train2017,val2017}/*.jpg`` and the stuffthingmaps PNGs in
    ``annotations/{train2017,val2017}/`` (value = COCO id - 1, 255 unlabeled) -> 171 classes."""
    root = Path(root)
    split = _split_name(split, {"train": "train2017", "val": "val2017"}, "COCO-Stuff")
    pairs = paired_files(root / "images" / split, root / "annotations" / split)
    return SegmentationDataset(pairs, 171, coco_stuff_lut(), COCO_STUFF_CLASSES, None, transform, root)


# ---- splits by sequence ---------------------------------------------------------------------------------------------
# Frames of one video drive look alike, so a validation set that shares a drive with training measures memory,
# not generalisation. These helpers split by the sequence prefix of the file names (CamVid ``0006R0_f02430``,
# ``Seq05VD_f00000``; Cityscapes ``aachen_000000_000019``) so whole drives are held out.

SEQUENCE_PATTERN = r"^([^_]+)_"  # the text before the first underscore
HOLDOUT_SPLIT = "holdout"


def sequence_of(path: str | Path, pattern: str = SEQUENCE_PATTERN) -> str:
    """The sequence a frame belongs to: the regex's first group (or whole match) searched in the file stem."""
    stem = Path(path).stem
    try:
        match = re.search(pattern, stem)
    except re.error as err:
        raise PSPNetError(f"sequence_pattern {pattern!r} is not a valid regular expression ({err})") from err
    if match is None:
        raise PSPNetError(f"{path}: file name does not match sequence_pattern {pattern!r}; set sequence_pattern "
                          "to a regex whose first group is the sequence (e.g. '^([^_]+)_')")
    return match.group(1) if match.re.groups else match.group(0)


def group_by_sequence(dataset: SegmentationDataset, pattern: str = SEQUENCE_PATTERN) -> dict[str, list[int]]:
    """Sequence name -> indices of its frames in ``dataset`` (names sorted, frames in dataset order)."""
    groups: dict[str, list[int]] = {}
    for i, (image, _) in enumerate(dataset.pairs):
        groups.setdefault(sequence_of(image, pattern), []).append(i)
    return dict(sorted(groups.items()))


def with_pairs(dataset: SegmentationDataset, pairs: Sequence[tuple[Path, Path | None]]) -> SegmentationDataset:
    """A copy of ``dataset`` (classes, label table, transform) over other pairs; empty is an error."""
    if not pairs:
        report("empty", dataset.root or "dataset", "no image/mask pairs left after the sequence selection")
    out = copy.copy(dataset)
    out.pairs = list(pairs)
    return out


def select_sequences(dataset: SegmentationDataset, keep: Sequence[str] | None = None, drop: Sequence[str] = (),
                     pattern: str = SEQUENCE_PATTERN) -> SegmentationDataset:
    """The frames of ``dataset`` whose sequence is in ``keep`` (all when None) and not in ``drop``."""
    groups = group_by_sequence(dataset, pattern)
    unknown = sorted(set(keep or ()) - set(groups))
    if unknown:
        raise PSPNetError(f"{dataset.root}: sequences {unknown} are not in this split; it has "
                          f"{', '.join(f'{s} ({len(i)})' for s, i in groups.items())}")
    chosen = sorted(i for s, idx in groups.items() if (keep is None or s in keep) and s not in drop for i in idx)
    return with_pairs(dataset, [dataset.pairs[i] for i in chosen])


def merge(datasets: Sequence[SegmentationDataset]) -> SegmentationDataset:
    """One dataset over the pairs of several splits of the same layout (``train+val``); duplicates once."""
    first = datasets[0]
    for d in datasets[1:]:
        if d.num_classes != first.num_classes or d.class_names != first.class_names:
            raise PSPNetError(f"{d.root}: cannot merge splits with different classes")
    pairs = list(dict.fromkeys(p for d in datasets for p in d.pairs))
    return with_pairs(first, pairs)


def tail_cuts(dataset: SegmentationDataset, tails: Mapping[str, float], pattern: str = SEQUENCE_PATTERN
              ) -> dict[str, str]:
    """Sequence -> the file stem where its held-out tail starts: the last ``fraction`` of its frames in name order
    (frame numbers), so a drive's later footage is held out the way a test split continues a trained-on drive."""
    groups = group_by_sequence(dataset, pattern)
    cuts = {}
    for seq, fraction in tails.items():
        seq = str(seq)
        if seq not in groups:
            raise PSPNetError(f"{dataset.root}: holdout_tails names sequence {seq!r}, which is not in this split; it "
                              f"has {', '.join(f'{s} ({len(i)})' for s, i in groups.items())}")
        if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise PSPNetError(f"holdout_tails[{seq!r}] = {fraction!r}: expected a fraction of the frames, 0 < f < 1")
        stems = sorted(Path(dataset.pairs[i][0]).stem for i in groups[seq])
        n_held = round(fraction * len(stems))
        if not 0 < n_held < len(stems):
            raise PSPNetError(f"holdout_tails[{seq!r}] = {fraction}: of its {len(stems)} frames it would hold out "
                              f"{n_held}; both parts need at least one frame")
        cuts[seq] = stems[-n_held]
    return cuts


def build_split(builder: Callable[[str], SegmentationDataset], split: str,
                holdout_sequences: Sequence[str] | None = None, holdout_from: str = "train",
                holdout_tails: Mapping[str, float] | None = None,
                sequence_pattern: str = SEQUENCE_PATTERN) -> SegmentationDataset:
    """A split spec over one layout: ``train``, ``train+val`` (merged), or ``holdout``.

    With ``holdout_sequences`` every split loses the frames of those sequences, so training never sees a
    held-out drive, and the split named ``holdout`` is exactly those frames, taken from ``holdout_from``
    (itself a spec such as ``train+val``). One ``dataset_options`` dict therefore gives the trainer
    train-minus-held-out for ``train_split`` and the held-out drives for ``val_split: holdout``.
    ``holdout_tails`` ({sequence: fraction}) also holds out the last fraction of a drive's frames (cut where
    ``holdout_from`` puts it), for a test split that continues a drive the training has the start of.
    """
    def base(spec: str) -> SegmentationDataset:
        parts = [spec] if Path(spec).exists() else [s.strip() for s in spec.split("+")]  # a list file's path stays whole
        if any(not s or s == HOLDOUT_SPLIT for s in parts):
            raise PSPNetError(f"split {spec!r}: expected names joined by '+', e.g. 'train+val'")
        datasets = [builder(s) for s in parts]
        return datasets[0] if len(datasets) == 1 else merge(datasets)

    if isinstance(holdout_sequences, str):
        holdout_sequences = [holdout_sequences]
    held = [str(s) for s in holdout_sequences or ()]
    source = base(holdout_from) if split == HOLDOUT_SPLIT or holdout_tails else None
    cuts = tail_cuts(source, holdout_tails, sequence_pattern) if holdout_tails else {}

    def in_tail(image: Path) -> bool:
        seq = sequence_of(image, sequence_pattern)
        return seq in cuts and Path(image).stem >= cuts[seq]

    if split == HOLDOUT_SPLIT:
        if not held and not cuts:
            raise PSPNetError(f"split {HOLDOUT_SPLIT!r} needs holdout_sequences or holdout_tails (what to validate on)")
        drives = set(select_sequences(source, keep=held, pattern=sequence_pattern).pairs) if held else set()
        return with_pairs(source, [p for p in source.pairs if p in drives or in_tail(p[0])])
    dataset = base(split)
    if held:
        dataset = select_sequences(dataset, drop=held, pattern=sequence_pattern)
    return with_pairs(dataset, [p for p in dataset.pairs if not in_tail(p[0])]) if cuts else dataset


def leave_one_sequence_out(dataset: SegmentationDataset, pattern: str = SEQUENCE_PATTERN
                           ) -> list[tuple[str, SegmentationDataset, SegmentationDataset]]:
    """The rotation of folds ``(sequence, every other sequence, that sequence)``, one per sequence.

    As recipes: fold ``s`` is ``dataset_options: {holdout_sequences: [s]}`` with ``val_split: holdout``.
    """
    groups = group_by_sequence(dataset, pattern)
    if len(groups) < 2:
        raise PSPNetError(f"{dataset.root}: leave-one-sequence-out needs two or more sequences, found {list(groups)}")
    return [(s, select_sequences(dataset, drop=[s], pattern=pattern), select_sequences(dataset, keep=[s], pattern=pattern))
            for s in groups]
