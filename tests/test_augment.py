"""The recipe's ``augment`` options: masks keep their labels and stay on their pixels, defaults are the old recipe."""

from __future__ import annotations

import random

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from pspnet.data.transforms import Augment, RandomScale, train_transforms
from pspnet.errors import PSPNetError

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# label -> colour, far apart so a pixel's colour names its label even after bilinear resampling inside a region
COLOURS = torch.tensor([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10]], dtype=torch.uint8)
LABELS = {0, 1, 2, 3, 255}


def blocks(h: int = 48, w: int = 64, seed: int = 0) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """A mask of 16x16 blocks of random labels (one ignored) and an image coloured by its label."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 4, (h // 16, w // 16), generator=g)
    mask = small.repeat_interleave(16, 0).repeat_interleave(16, 1)
    image = COLOURS[mask].permute(2, 0, 1).contiguous()
    mask = mask.to(torch.uint8)
    mask[:16, :16] = 255
    return tv_tensors.Image(image), tv_tensors.Mask(mask[None])


def label_of_colour(image: torch.Tensor) -> torch.Tensor:
    """Nearest label colour of every pixel of a normalised image."""
    rgb = (image * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)) * 255
    dist = ((rgb[None] - COLOURS.float().view(4, 3, 1, 1)) ** 2).sum(1)
    return dist.argmin(0)


GEOMETRIC = {  # no blur: it blends the colours across block edges, which is not what is tested here
    "vflip": Augment(vflip=1.0, blur=0),
    "rot90": Augment(rot90=True, blur=0),
    "affine": Augment(translate=0.2, shear=10, blur=0),
    "elastic": Augment(elastic=30.0, elastic_sigma=6.0, blur=0),
    "aspect": Augment(aspect=(0.6, 1.6), blur=0),
    "all": Augment(vflip=0.5, rot90=True, translate=0.1, shear=5, elastic=20.0, aspect=(0.8, 1.25), blur=0),
}


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize("seed", range(3))
def test_geometric_options_keep_labels_and_alignment(name, seed):
    random.seed(seed)
    torch.manual_seed(seed)
    image, mask = blocks(seed=seed)
    out_image, out_mask = train_transforms((40, 56), MEAN, STD, (0.75, 1.5), 10, GEOMETRIC[name])(image, mask)
    assert out_image.shape == (3, 40, 56) and out_mask.shape == (1, 40, 56)
    assert set(out_mask.unique().tolist()) <= LABELS  # nearest only: no blended label values
    labelled = out_mask[0] != 255
    agree = (label_of_colour(out_image)[labelled] == out_mask[0][labelled]).float().mean()
    assert agree > 0.9, f"{name}: image and mask disagree on {100 * (1 - agree):.1f}% of the pixels"


def test_geometric_options_change_the_layout():
    image, mask = blocks()
    for a in (Augment(vflip=1.0, hflip=0), Augment(rot90=True, hflip=0)):
        torch.manual_seed(0)
        random.seed(2)  # randrange(4) != 0 for this seed
        out = train_transforms((48, 64), MEAN, STD, (1.0, 1.0), 0, Augment(**{**a.__dict__, "blur": 0}))
        moved = [out(image, mask)[1] for _ in range(4)]
        assert any(not torch.equal(m, mask.long()) for m in moved)


def test_photometric_options_leave_the_mask_alone():
    image, mask = blocks()
    a = Augment(hflip=0, blur=1.0, color_jitter=0.4, hue=0.05, gamma=(0.7, 1.5), noise=0.05)
    torch.manual_seed(0)
    random.seed(0)
    out_image, out_mask = train_transforms((48, 64), MEAN, STD, (1.0, 1.0), 0, a)(image, mask)
    assert torch.equal(out_mask, mask.long())
    plain = train_transforms((48, 64), MEAN, STD, (1.0, 1.0), 0, Augment(hflip=0, blur=0))(image, mask)[0]
    assert (out_image - plain).abs().mean() > 0.01


@pytest.mark.parametrize("channels", [1, 3])
def test_intensity_options_keep_grayscale_gray(channels):
    torch.manual_seed(0)
    random.seed(0)
    gray = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8).repeat(channels, 1, 1)
    mask = tv_tensors.Mask(torch.zeros(1, 32, 32, dtype=torch.uint8))
    a = Augment(hflip=0, blur=0, brightness=0.5, contrast=0.5, gamma=(0.5, 2.0))
    mean, std = MEAN[:channels], STD[:channels]
    outs = [train_transforms((32, 32), mean, std, (1.0, 1.0), 0, a)(tv_tensors.Image(gray), mask)[0]
            for _ in range(4)]
    for out in outs:
        assert out.shape == (channels, 32, 32)
        assert torch.allclose(out, out[:1].expand_as(out))  # still gray
    assert any((out - outs[0]).abs().max() > 0.05 for out in outs[1:])  # and actually jittered


def test_defaults_reproduce_the_official_pipeline():
    """A recipe without ``augment`` draws the same crops as before the option set existed."""
    fill = {tv_tensors.Image: [128, 128, 128], tv_tensors.Mask: 255}
    official = v2.Compose([
        RandomScale((0.5, 2.0)),
        v2.RandomRotation(10, interpolation=v2.InterpolationMode.BILINEAR, fill=fill),
        v2.RandomApply([v2.GaussianBlur(5)], p=0.5),
        v2.RandomHorizontalFlip(),
        v2.RandomCrop([40, 56], pad_if_needed=True, fill=fill),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(list(MEAN), list(STD))])
    ours = train_transforms((40, 56), MEAN, STD)
    image, mask = blocks()
    for seed in range(6):
        random.seed(seed)
        torch.manual_seed(seed)
        expected = official(image, mask)
        random.seed(seed)
        torch.manual_seed(seed)
        got = ours(image, mask)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert Augment.from_dict({}) == Augment() == Augment.from_dict(None)


def test_from_dict_parses_a_recipe_and_names_bad_keys():
    a = Augment.from_dict({"color_jitter": 0.4, "gamma": [0.7, 1.5], "blur": 0.2, "vflip": 0.5, "rot90": True})
    assert a.gamma == (0.7, 1.5) and a.jitter("brightness") == 0.4 and a.jitter("saturation") == 0.4
    assert Augment(color_jitter=0.4, saturation=0.0).jitter("saturation") == 0.0  # own field wins
    with pytest.raises(PSPNetError, match="unknown options \\['vertical_flip'\\]"):
        Augment.from_dict({"vertical_flip": 0.5})
    with pytest.raises(PSPNetError, match="augment.gamma"):
        Augment.from_dict({"gamma": 1.2})
    with pytest.raises(PSPNetError, match="augment.vflip is a probability"):
        Augment.from_dict({"vflip": 2})
    with pytest.raises(PSPNetError, match="augment.brightness"):
        Augment(brightness=1.5)
