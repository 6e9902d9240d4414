"""Segmentation datasets in their real on-disk layouts, all yielding (image, mask) tensors.

Every dataset is a list of (image, mask) file pairs plus a lookup table from stored label values to
train ids (255 = ignore). Values the table does not know raise an error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from pspnet.data.io import list_images, read_image, read_mask
from pspnet.data.meta import CAMVID_CLASSES, CAMVID_PALETTE
from pspnet.errors import PSPNetError

IGNORE = 255
UNKNOWN = -1  # marks stored values that are not allowed in a lookup table


def identity_lut(num_classes: int, size: int = 256, ignore: Sequence[int] = (IGNORE,)) -> np.ndarray:
    """Values 0..num_classes-1 map to themselves, ``ignore`` values to 255, anything else is an error."""
    lut = np.full(size, UNKNOWN, dtype=np.int64)
    lut[:num_classes] = np.arange(num_classes)
    for v in ignore:
        lut[v] = IGNORE
    return lut


class SegmentationDataset(Dataset):
    """Image/mask pairs with a label lookup table and a joint transform."""

    def __init__(self, pairs: Sequence[tuple[Path, Path | None]], num_classes: int, lut: np.ndarray,
                 class_names: Sequence[str] | None = None, palette: Sequence[Sequence[int]] | None = None,
                 transform: Callable | None = None, root: Path | None = None):
        if not pairs:
            raise PSPNetError(f"{root or 'dataset'}: no image/mask pairs found")
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.lut = lut
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.palette = palette
        self.transform = transform
        self.root = root

    def __len__(self) -> int:
        return len(self.pairs)

    def load_mask(self, index: int) -> np.ndarray:
        """The mask of pair ``index`` as train ids (uint8, 255 = ignore), validated."""
        image_path, mask_path = self.pairs[index]
        raw = read_mask(mask_path)
        if raw.ndim == 3:
            raise PSPNetError(f"{mask_path}: RGB mask, but this dataset expects single-channel label ids")
        if raw.max() >= len(self.lut):
            raise PSPNetError(f"{mask_path}: label values up to {raw.max()} are outside the class set")
        ids = self.lut[raw]
        if (ids == UNKNOWN).any():
            bad = np.unique(raw[ids == UNKNOWN])
            raise PSPNetError(f"{mask_path}: label values {bad.tolist()[:20]} are outside the class set "
                              f"(0..{self.num_classes - 1} and {IGNORE} for ignore)")
        return ids.astype(np.uint8)

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


def paired_files(image_dir: Path, mask_dir: Path, mask_suffix: str = "") -> list[tuple[Path, Path]]:
    """Match images to masks by file stem (plus ``mask_suffix``); unmatched files are an error."""
    if not image_dir.is_dir():
        raise PSPNetError(f"{image_dir}: image folder does not exist")
    if not mask_dir.is_dir():
        raise PSPNetError(f"{mask_dir}: mask folder does not exist")
    images = {p.relative_to(image_dir).with_suffix(""): p for p in list_images(image_dir)}
    masks = {}
    for p in list_images(mask_dir):
        stem = p.relative_to(mask_dir).with_suffix("")
        if mask_suffix and stem.name.endswith(mask_suffix):
            stem = stem.with_name(stem.name[: -len(mask_suffix)])
        masks[stem] = p
    if not images:
        raise PSPNetError(f"{image_dir}: folder has no images")
    no_mask = sorted(str(images[s]) for s in images.keys() - masks.keys())
    no_image = sorted(str(masks[s]) for s in masks.keys() - images.keys())
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} images without a mask (e.g. {no_mask[0]})")
        if no_image:
            parts.append(f"{len(no_image)} masks without an image (e.g. {no_image[0]})")
        raise PSPNetError(f"{image_dir.parent}: " + "; ".join(parts))
    return [(images[s], masks[s]) for s in sorted(images)]


def camvid(root: str | Path, split: str = "train", transform: Callable | None = None) -> SegmentationDataset:
    """CamVid in the SegNet layout: ``{split}/`` frames and ``{split}annot/`` maps, 11 classes, 11 = void."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise PSPNetError(f"CamVid split must be train, val or test, got {split!r}")
    pairs = paired_files(root / split, root / f"{split}annot")
    return SegmentationDataset(pairs, 11, identity_lut(11, ignore=(11, IGNORE)), CAMVID_CLASSES, CAMVID_PALETTE,
                               transform, root)
