"""The training recipe's augmentation as tensor operations on the training device (``device_augment: true``).

The loader's transforms cost about 33 ms a frame on one CPU core for the CamVid recipe (decode, resize, rotate,
blur on the whole frame, then crop), so loader processes compete with training for the cores. Here the decoded
frames are kept in device memory once, and each crop is one antialiased resize and one ``grid_sample`` that
rotates and crops together (7 ms a frame on 2 CPU threads). Measured by benchmarks/device_augment_speed.py:
1.10x (Lite0) and 1.16x (Lite2) the loader's training speed on an H200 with 15 loader processes, 1.21x on 2 CPU
cores (batch 4, one loader process). The steps and their ranges are ``train_transforms``'s (scale with aspect,
rotation, blur, horizontal flip, a crop padded with the mean colour and the ignore label), drawn from each
sample's own seed, so a resumed run draws the same crops; the pixels differ slightly from the loader's (the crop
is cut from the rotated image in one resampling, the blur applied to the crop).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from pspnet.data.transforms import Augment
from pspnet.errors import PSPNetError

# the Augment options done here; the others (photometric, affine, elastic) only in the loader's transforms
SUPPORTED = ("hflip", "blur", "blur_sigma", "aspect")


class DeviceAugment:
    """Random training crops of ``dataset``'s frames, cut on ``device``: ``(images, masks) = aug(indices, seeds)``."""

    def __init__(self, dataset: Dataset, crop_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 scale: Sequence[float], rotate: float, augment: Augment, device: torch.device,
                 ignore_index: int = 255, progress: bool = True):
        defaults = Augment()
        unsupported = [f.name for f in dataclasses.fields(Augment)
                       if f.name not in SUPPORTED and getattr(augment, f.name) != getattr(defaults, f.name)]
        if unsupported:
            raise PSPNetError(f"device_augment: true does scale, rotate, crop_size and augment {list(SUPPORTED)}; "
                              f"this recipe also sets augment {unsupported}: drop them, or set device_augment: false")
        if getattr(dataset, "transform", None) is not None:
            raise PSPNetError("device_augment: the dataset must hand over untransformed frames (transform=None)")
        self.crop = (int(crop_size[0]), int(crop_size[1]))
        self.scale, self.rotate, self.augment = (float(scale[0]), float(scale[1])), float(rotate), augment
        self.device, self.ignore_index = device, ignore_index
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.frames: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i in tqdm(range(len(dataset)), desc="frames to the device", disable=not progress,  # type: ignore[arg-type]
                      dynamic_ncols=True):
            image, mask = dataset[i]
            self.frames.append((image.to(device), mask.to(device, torch.uint8)))

    def __call__(self, indices: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        crops = [self.crop_one(i, s) for i, s in zip(indices, seeds)]
        return torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops])

    def crop_one(self, index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One normalised float crop and its long mask, from frame ``index`` with the draws of ``seed``."""
        g = torch.Generator().manual_seed(seed % 2**63)

        def uniform(lo: float, hi: float) -> float:
            return lo + (hi - lo) * torch.rand((), generator=g).item()

        image, mask = self.frames[index]
        a = self.augment
        h, w = image.shape[-2:]
        f = uniform(*self.scale)
        stretch = math.exp(uniform(math.log(a.aspect[0]), math.log(a.aspect[1]))) if a.aspect else 1.0
        hs, ws = max(1, round(h * f)), max(1, round(w * f * stretch))
        scaled = F.interpolate(image[None].float(), (hs, ws), mode="bilinear", antialias=True, align_corners=False)
        scaled_mask = F.interpolate(mask[None, None].float(), (hs, ws), mode="nearest")
        angle = math.radians(uniform(-self.rotate, self.rotate))
        ch, cw = self.crop
        top = _offset(hs, ch, g)
        left = _offset(ws, cw, g)
        # crop pixel centres -> the rotated scaled image's coordinates -> the unrotated one's, in [-1, 1]
        ys = torch.arange(ch, device=self.device, dtype=torch.float32) + 0.5 + top - hs / 2
        xs = torch.arange(cw, device=self.device, dtype=torch.float32) + 0.5 + left - ws / 2
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        cos, sin = math.cos(angle), math.sin(angle)
        grid = torch.stack(((cos * x - sin * y) * 2 / ws, (sin * x + cos * y) * 2 / hs), dim=-1)[None]
        ones = torch.ones_like(scaled[:, :1])
        sampled = F.grid_sample(torch.cat((scaled, ones), 1), grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)[0]
        fill = self.mean * 255
        crop = sampled[:-1] + (1 - sampled[-1:]) * fill  # outside the frame: the mean colour, as the loader pads
        labels = F.grid_sample(scaled_mask + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
        labels = torch.where(labels == 0, torch.full_like(labels, self.ignore_index), labels - 1)
        if a.blur and uniform(0, 1) < a.blur:
            sigma = uniform(*a.blur_sigma)
            crop = TF.gaussian_blur(crop, [5, 5], [sigma, sigma])
        if a.hflip and uniform(0, 1) < a.hflip:
            crop, labels = crop.flip(-1), labels.flip(-1)
        return (crop / 255 - self.mean) / self.std, labels.long()


def _offset(size: int, crop: int, g: torch.Generator) -> int:
    """Where the crop starts: inside a larger image, or placing a smaller image anywhere inside the crop."""
    lo, hi = min(0, size - crop), max(0, size - crop)
    return lo + int(torch.randint(hi - lo + 1, (), generator=g))
