"""Joint image + mask augmentation (torchvision.transforms.v2; masks resize with nearest)."""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale`` (semseg's RandScale)."""

    def __init__(self, scale: tuple[float, float]):
        super().__init__()
        self.scale = scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        f = random.uniform(*self.scale)
        return {"size": [max(1, round(h * f)), max(1, round(w * f))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def _fill(mean: Sequence[float], ignore_index: int) -> dict[type, Any]:
    """Pad images with the mean colour (0 after normalisation), masks with the ignore label."""
    return {tv_tensors.Image: [round(m * 255) for m in mean], tv_tensors.Mask: ignore_index}


def train_transforms(crop_size: Sequence[int], mean: Sequence[float], std: Sequence[float], scale=(0.5, 2.0),
                     rotate: float = 10.0, blur: bool = True, flip: bool = True, ignore_index: int = 255) -> v2.Compose:
    """The official recipe: scale 0.5-2, rotate +-10, blur, flip, pad with ignore, random crop."""
    fill = _fill(mean, ignore_index)
    steps: list[v2.Transform] = [RandomScale(scale)]
    if rotate:
        steps.append(v2.RandomRotation(rotate, interpolation=v2.InterpolationMode.BILINEAR, fill=fill))
    if blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(5)], p=0.5))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.RandomCrop(list(crop_size), pad_if_needed=True, fill=fill), *_normalize(mean, std)]
    return v2.Compose(steps)


def eval_transforms(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    return v2.Compose(_normalize(mean, std))


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(list(mean), list(std))]
