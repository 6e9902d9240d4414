"""Joint image + mask augmentation: masks keep their label set, padding is 'ignore', shapes are the crop."""

from __future__ import annotations

import random

import pytest
import torch
from torchvision import tv_tensors

from pspnet.data.transforms import Augment, RandomScale, eval_transforms, train_transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LABELS = {0, 3, 7, 255}


def sample(h: int = 30, w: int = 40) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    g = torch.Generator().manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    values = torch.tensor(sorted(LABELS), dtype=torch.uint8)
    mask = tv_tensors.Mask(values[torch.randint(0, len(values), (1, h, w), generator=g)])
    return image, mask


@pytest.mark.parametrize("seed", range(8))
def test_train_transforms_keep_the_label_set(seed):
    random.seed(seed)
    torch.manual_seed(seed)
    image, mask = sample()
    out_image, out_mask = train_transforms((24, 32), MEAN, STD)(image, mask)
    assert out_image.shape == (3, 24, 32) and out_image.dtype == torch.float32
    assert out_mask.shape == (1, 24, 32) and out_mask.dtype == torch.int64
    assert set(out_mask.unique().tolist()) <= LABELS  # nearest resampling, no blended label values


def test_padding_is_ignore_for_masks_and_mean_for_images():
    torch.manual_seed(0)
    image, mask = sample(10, 12)
    mask = tv_tensors.Mask(torch.zeros_like(mask))
    image = tv_tensors.Image(torch.stack([torch.full((10, 12), round(m * 255), dtype=torch.uint8) for m in MEAN]))
    t = train_transforms((40, 48), MEAN, STD, scale=(1.0, 1.0), rotate=0, augment=Augment(blur=0, hflip=0))
    out_image, out_mask = t(image, mask)
    assert out_mask.shape == (1, 40, 48)
    assert (out_mask == 255).sum() == 40 * 48 - 10 * 12 and (out_mask == 0).sum() == 10 * 12
    assert out_image.abs().max() < 0.02  # mean-coloured image and padding both normalise to ~0


def test_rotation_fills_corners_with_ignore():
    torch.manual_seed(1)
    random.seed(1)
    image, mask = sample(40, 40)
    mask = tv_tensors.Mask(torch.zeros_like(mask))
    t = train_transforms((40, 40), MEAN, STD, scale=(1.0, 1.0), rotate=30, augment=Augment(blur=0, hflip=0))
    rotated = [t(image, mask)[1] for _ in range(4)]
    assert any((m == 255).any() for m in rotated)
    assert all(set(m.unique().tolist()) <= {0, 255} for m in rotated)


def test_random_scale_and_flip_move_image_and_mask_together():
    image = tv_tensors.Image(torch.zeros(3, 20, 20, dtype=torch.uint8))
    image[:, :, :5] = 255
    mask = tv_tensors.Mask(torch.zeros(1, 20, 20, dtype=torch.uint8))
    mask[:, :, :5] = 7
    for seed in range(6):
        torch.manual_seed(seed)
        random.seed(seed)
        img, msk = RandomScale((0.5, 2.0))(image, mask)
        assert img.shape[-2:] == msk.shape[-2:]
        from torchvision.transforms import v2

        img, msk = v2.RandomHorizontalFlip()(img, msk)
        bright = img[0] > 127
        assert ((msk[0] == 7) == bright).float().mean() > 0.9


def test_eval_transforms_normalise_only():
    image, mask = sample()
    out_image, out_mask = eval_transforms(MEAN, STD)(image, mask)
    assert out_image.shape == image.shape and torch.equal(out_mask, mask.long())
    expected = (image[0].float() / 255 - MEAN[0]) / STD[0]
    assert torch.allclose(out_image[0], expected, atol=1e-5)
