"""Crops cut on the training device (``device_augment``): the same steps as the loader's, exact where they must be."""

from __future__ import annotations

import pytest
import torch

from pspnet.data.device_augment import DeviceAugment
from pspnet.data.transforms import Augment
from pspnet.engine.train import train
from pspnet.errors import PSPNetError
from test_engine import assert_same_state, make_folder_dataset, tiny_config

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OFF = Augment(hflip=0.0, blur=0.0)


class Frames:
    """Two 3x20x30 frames with labels 0..3 and an ignored corner, as a dataset hands them over untransformed."""

    transform = None

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(2):
            image = torch.randint(0, 256, (3, 20, 30), generator=g, dtype=torch.uint8)
            mask = torch.randint(0, 4, (20, 30), generator=g)
            mask[:3, :3] = 255
            self.items.append((image, mask))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def cutter(crop=(20, 30), scale=(1.0, 1.0), rotate=0.0, augment=OFF) -> DeviceAugment:
    return DeviceAugment(Frames(), crop, MEAN, STD, scale, rotate, augment, torch.device("cpu"), progress=False)


def normalised(image: torch.Tensor) -> torch.Tensor:
    return (image.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def test_without_scale_rotation_or_flip_the_crop_is_the_frame():
    images, masks = cutter()([1, 0], [5, 6])
    for k, i in enumerate((1, 0)):
        image, mask = Frames()[i]
        assert torch.allclose(images[k], normalised(image), atol=1e-4)
        assert torch.equal(masks[k], mask)
    assert images.shape == (2, 3, 20, 30) and masks.dtype == torch.long


def test_a_certain_flip_mirrors_image_and_mask_together():
    images, masks = cutter(augment=Augment(hflip=1.0, blur=0.0))([0], [1])
    image, mask = Frames()[0]
    assert torch.allclose(images[0], normalised(image).flip(-1), atol=1e-4)
    assert torch.equal(masks[0], mask.flip(-1))


def test_a_small_frame_is_padded_with_the_mean_colour_and_the_ignore_label():
    images, masks = cutter(crop=(40, 60))([0], [2])  # the 20x30 frame lands somewhere inside the 40x60 crop
    rows, cols = (masks[0] != 255).nonzero(as_tuple=True)
    image, mask = Frames()[0]
    top = int(rows.max()) - 19  # the frame's own ignored corner is its top-left, so place it by its far edges
    left = int(cols.max()) - 29
    inside = torch.zeros(40, 60, dtype=torch.bool)
    inside[top:top + 20, left:left + 30] = True
    assert torch.equal(masks[0][inside].view(20, 30), mask)
    assert torch.allclose(images[0][:, inside].view(3, 20, 30), normalised(image), atol=1e-4)
    assert (masks[0][~inside] == 255).all()
    assert images[0][:, ~inside].abs().max() < 1e-4  # the mean colour normalises to 0


def test_random_crops_keep_labels_and_repeat_for_the_same_seed():
    cut = cutter(crop=(16, 16), scale=(0.5, 2.0), rotate=10, augment=Augment(aspect=(0.8, 1.25)))
    first, again, other = cut([0, 1], [7, 8]), cut([0, 1], [7, 8]), cut([0, 1], [9, 10])
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert set(first[1].unique().tolist()) <= {0, 1, 2, 3, 255}  # nearest resampling: no blended labels


def test_options_it_cannot_do_are_refused_by_name():
    with pytest.raises(PSPNetError, match=r"color_jitter.*device_augment: false"):
        cutter(augment=Augment(color_jitter=0.4))
    frames = Frames()
    frames.transform = lambda image, mask: (image, mask)
    with pytest.raises(PSPNetError, match="untransformed"):
        DeviceAugment(frames, (8, 8), MEAN, STD, (1, 1), 0, OFF, torch.device("cpu"), progress=False)


def test_a_device_augment_run_resumes_bit_identically(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    straight = train(tiny_config(data, tmp_path / "straight", device_augment=True, iterations=4), progress=False)
    cfg = tiny_config(data, tmp_path / "split", device_augment=True, iterations=4)
    train(cfg, progress=False, stop_after=2)
    resumed = train(cfg, resume="auto", progress=False)
    assert_same_state(straight["model"].state_dict(), resumed["model"].state_dict())
    assert straight["history"][-1]["loss"] == resumed["history"][-1]["loss"]


def test_the_cli_flag_sets_the_option():
    from pspnet.cli import build_parser
    from pspnet.cli.train import options_given

    args = build_parser().parse_args(["train", "--device-augment"])
    assert options_given(args)["device_augment"] is True
    assert "device_augment" not in options_given(build_parser().parse_args(["train"]))
