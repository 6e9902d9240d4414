"""Joint image + mask augmentation (torchvision.transforms.v2; masks are only ever resampled nearest).

``Augment`` is the recipe's ``augment:`` option set. Its defaults are the official recipe's extras (blur
half the time, horizontal flip half the time); everything else is off by default, so a recipe without
``augment`` trains exactly as before.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pspnet.errors import PSPNetError


@dataclass(frozen=True)
class Augment:
    """Augmentation options beyond scale/rotate/crop (which stay ``scale``, ``rotate``, ``crop_size``).

    Geometric ones move image and mask together; photometric ones touch the image only and work on
    grayscale images too (brightness, contrast and gamma keep a gray image gray).
    """

    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip (top-down views, microscopy; not road scenes)
    rot90: bool = False  # rotate by a random multiple of 90 degrees (orientation-free images)
    blur: float = 0.5  # probability of a 5x5 Gaussian blur with sigma drawn from blur_sigma
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    aspect: tuple[float, float] | None = None  # stretch the width against the height by a factor in this range
    translate: float = 0.0  # affine jitter: shift by up to this fraction of the size ...
    shear: float = 0.0  # ... and shear by up to this many degrees
    elastic: float = 0.0  # elastic deformation strength (torchvision alpha, pixels), half the time; 0 = off
    elastic_sigma: float = 5.0  # smoothness of the elastic field
    color_jitter: float = 0.0  # brightness, contrast and saturation together (each field below wins when set)
    brightness: float | None = None  # factor drawn from [1 - b, 1 + b]; dusk is ~0.5, overcast ~0.7
    contrast: float | None = None
    saturation: float | None = None  # no effect on gray images
    hue: float = 0.0  # shift of up to this fraction of the colour wheel (<= 0.5)
    gamma: tuple[float, float] | None = None  # gamma drawn from this range: > 1 darkens mid-tones (dusk)
    noise: float = 0.0  # std of additive Gaussian noise on the 0..1 image, half the time; 0 = off

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "Augment":
        """Validate a recipe's ``augment:`` mapping; unknown keys and out-of-range values name the key."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PSPNetError(f"augment: unknown options {unknown}; known: {sorted(known)}")
        for key in ("blur_sigma", "aspect", "gamma"):
            v = values.get(key)
            if v is not None:
                if not isinstance(v, (list, tuple)) or len(v) != 2:
                    raise PSPNetError(f"augment.{key} must be a [low, high] pair, got {v!r}")
                values[key] = (float(v[0]), float(v[1]))
        return cls(**values)

    def __post_init__(self) -> None:
        for key in ("hflip", "vflip", "blur"):
            if not 0 <= getattr(self, key) <= 1:
                raise PSPNetError(f"augment.{key} is a probability in [0, 1], got {getattr(self, key)!r}")
        for key in ("translate", "shear", "elastic", "color_jitter", "noise", "hue", "elastic_sigma"):
            if getattr(self, key) < 0:
                raise PSPNetError(f"augment.{key} must be >= 0, got {getattr(self, key)!r}")
        if self.hue > 0.5:
            raise PSPNetError(f"augment.hue must be <= 0.5, got {self.hue!r}")
        for key in ("brightness", "contrast", "saturation"):
            v = getattr(self, key)
            if v is not None and not 0 <= v < 1:
                raise PSPNetError(f"augment.{key} must be in [0, 1), got {v!r}")
        if self.color_jitter >= 1:
            raise PSPNetError(f"augment.color_jitter must be in [0, 1), got {self.color_jitter!r}")
        for key in ("blur_sigma", "aspect", "gamma"):
            v = getattr(self, key)
            if v is not None and not 0 < v[0] <= v[1]:
                raise PSPNetError(f"augment.{key} must be 0 < low <= high, got {list(v)}")
        if self.translate > 1:
            raise PSPNetError(f"augment.translate is a fraction of the size in [0, 1], got {self.translate!r}")

    def jitter(self, key: str) -> float:
        """Brightness/contrast/saturation strength: its own field when set, else ``color_jitter``."""
        own = getattr(self, key)
        return self.color_jitter if own is None else own


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale`` (semseg's RandScale), the width additionally by a
    log-uniform ``aspect`` factor when given."""

    def __init__(self, scale: tuple[float, float], aspect: tuple[float, float] | None = None):
        super().__init__()
        self.scale = scale
        self.aspect = aspect

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        f = random.uniform(*self.scale)
        a = math.exp(random.uniform(math.log(self.aspect[0]), math.log(self.aspect[1]))) if self.aspect else 1.0
        return {"size": [max(1, round(h * f)), max(1, round(w * f * a))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


class RandomRot90(v2.Transform):
    """Rotate by 0, 90, 180 or 270 degrees (exact: no resampling, nothing cut off)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": random.randrange(4)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)) or params["k"] == 0:
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1)), like=inpt)


class RandomGamma(v2.Transform):
    """Gamma correction with gamma drawn log-uniformly from ``gamma``, on images only."""

    def __init__(self, gamma: tuple[float, float]):
        super().__init__()
        self.gamma = gamma

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": math.exp(random.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image):
            return TF.adjust_gamma(inpt, params["gamma"])
        return inpt


class ImageOnly(v2.Transform):
    """Apply ``inner`` to the image and pass masks through: v2's photometric transforms leave masks alone,
    but its GaussianNoise refuses integer masks, so it is wrapped here."""

    def __init__(self, inner: v2.Transform):
        super().__init__()
        self.inner = inner

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self.inner(inpt) if isinstance(inpt, tv_tensors.Image) else inpt


def _fill(mean: Sequence[float], ignore_index: int) -> dict[type, Any]:
    """Pad images with the mean colour (0 after normalisation), masks with the ignore label."""
    return {tv_tensors.Image: [round(m * 255) for m in mean], tv_tensors.Mask: ignore_index}


def train_transforms(crop_size: Sequence[int], mean: Sequence[float], std: Sequence[float], scale=(0.5, 2.0),
                     rotate: float = 10.0, augment: Augment | None = None, ignore_index: int = 255) -> v2.Compose:
    """The official recipe (scale 0.5-2, rotate +-10, blur, flip, pad with ignore, random crop) plus ``augment``.

    Steps that ``augment`` leaves off are not added at all, so the defaults draw the same random numbers in
    the same order as the official recipe: a seeded run reproduces its earlier crops exactly.
    """
    a = augment or Augment()
    fill = _fill(mean, ignore_index)
    bilinear = v2.InterpolationMode.BILINEAR  # v2 resamples tv_tensors.Mask with nearest whatever is asked
    steps: list[v2.Transform] = [RandomScale(scale, a.aspect)]
    if rotate:
        steps.append(v2.RandomRotation(rotate, interpolation=bilinear, fill=fill))
    if a.translate or a.shear:
        steps.append(v2.RandomAffine(0, translate=(a.translate, a.translate) if a.translate else None,
                                     shear=a.shear or None, interpolation=bilinear, fill=fill))
    if a.elastic:
        steps.append(v2.RandomApply([v2.ElasticTransform(a.elastic, a.elastic_sigma, bilinear, fill)], p=0.5))
    if a.blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(5, a.blur_sigma)], p=a.blur))
    if a.hflip:
        steps.append(v2.RandomHorizontalFlip(a.hflip))
    if a.vflip:
        steps.append(v2.RandomVerticalFlip(a.vflip))
    if a.rot90:
        steps.append(RandomRot90())
    steps.append(v2.RandomCrop(list(crop_size), pad_if_needed=True, fill=fill))
    brightness, contrast, saturation = a.jitter("brightness"), a.jitter("contrast"), a.jitter("saturation")
    if brightness or contrast or saturation or a.hue:  # after the crop: per-pixel, so cheaper on the smaller image
        steps.append(v2.ColorJitter(brightness or None, contrast or None, saturation or None, a.hue or None))
    if a.gamma:
        steps.append(RandomGamma(a.gamma))
    steps.append(_to_float())
    if a.noise:
        steps.append(v2.RandomApply([ImageOnly(v2.GaussianNoise(sigma=a.noise, clip=True))], p=0.5))
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def eval_transforms(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    return v2.Compose([_to_float(), v2.Normalize(list(mean), list(std))])


def _to_float() -> v2.Transform:
    return v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True)


def class_mix(images: torch.Tensor, masks: torch.Tensor, classes: Sequence[int], p: float,
              generator: torch.Generator, share: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """ClassMix (Olsson et al., WACV 2021) restricted to chosen classes, on a batch of crops.

    Each crop, with probability ``p``, gets the pixels of ``classes`` in the batch's previous crop pasted at the
    same place, labels included. Thin objects (poles, signs, people) then stand in front of streets they were never
    seen in, so the model cannot name them by their surroundings alone. ``share`` < 1 pastes only a random
    ``ceil(share x n)`` of the n chosen classes the source crop holds, drawn anew for each crop: with every class
    listed and share 0.5 this is the paper's own rule (half the source's classes), which mixes whole scenes, not
    only objects. Needs two crops or more; the draws come from ``generator`` so a resumed run mixes the same crops
    (share 1 draws nothing more, so runs without it are unchanged).
    """
    if images.shape[0] < 2 or not classes or p <= 0:
        return images, masks
    chosen = (torch.rand(images.shape[0], generator=generator) < p).to(masks.device)
    source_images, source_masks = images.roll(1, dims=0), masks.roll(1, dims=0)
    listed = torch.tensor(list(classes), device=masks.device)
    if share >= 1:
        paste = torch.isin(source_masks, listed) & chosen.view(-1, 1, 1)
    else:
        paste = torch.zeros_like(masks, dtype=torch.bool)
        for i in chosen.nonzero().flatten().tolist():
            present = listed[torch.isin(listed, source_masks[i].unique())]
            picked = present[torch.randperm(len(present), generator=generator)[:math.ceil(share * len(present))]]
            paste[i] = torch.isin(source_masks[i], picked)
    return torch.where(paste.unsqueeze(1), source_images, images), torch.where(paste, source_masks, masks)
