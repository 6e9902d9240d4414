"""class_mix: chosen classes pasted between the crops of a batch, labels with them; checked options; resumable."""

from __future__ import annotations

import math

import pytest
import torch

from pspnet.data.transforms import class_mix
from pspnet.engine.config import TrainConfig
from pspnet.engine.train import train
from pspnet.errors import PSPNetError
from test_engine import assert_option_resumes_alike_and_matters, data, tiny_config  # noqa: F401  (data is a fixture)


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 12, 16, generator=g)
    masks = torch.randint(0, 5, (n, 12, 16), generator=g)
    masks[:, 0] = 255  # ignore pixels are never pasted, nor pasted over unless a chosen class lands there
    return images, masks


def test_pasted_pixels_come_from_the_previous_crop_with_their_labels():
    images, masks = batch()
    mixed, labels = class_mix(images, masks, [1, 3], 1.0, torch.Generator().manual_seed(1))
    source_images, source_masks = images.roll(1, 0), masks.roll(1, 0)
    pasted = torch.isin(source_masks, torch.tensor([1, 3]))
    assert torch.equal(labels, torch.where(pasted, source_masks, masks))
    assert torch.equal(mixed, torch.where(pasted.unsqueeze(1), source_images, images))
    assert pasted.any() and (labels[~pasted] == masks[~pasted]).all()
    assert (labels[:, 0] == 255).all()  # the ignore row: no chosen class there to paste
    assert mixed.shape == images.shape and labels.dtype == masks.dtype


def test_the_share_of_crops_mixed_follows_p_and_the_generator():
    images, masks = batch(n=400)
    for p in (0.0, 0.25, 1.0):
        _, labels = class_mix(images, masks, [2], p, torch.Generator().manual_seed(7))
        share = (labels != masks).flatten(1).any(1).float().mean().item()
        assert share == pytest.approx(p, abs=0.07)
    a = class_mix(images, masks, [2], 0.5, torch.Generator().manual_seed(7))
    b = class_mix(images, masks, [2], 0.5, torch.Generator().manual_seed(7))
    c = class_mix(images, masks, [2], 0.5, torch.Generator().manual_seed(8))
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


def test_a_share_pastes_a_random_half_of_the_classes_each_source_holds():
    images, masks = batch(n=64)
    listed = [0, 1, 2, 3, 4]
    mixed, labels = class_mix(images, masks, listed, 1.0, torch.Generator().manual_seed(3), share=0.5)
    source_images, source_masks = images.roll(1, 0), masks.roll(1, 0)
    picks = set()
    for i in range(len(images)):
        held = [c for c in listed if (source_masks[i] == c).any()]
        took = [c for c in held
                if torch.equal(mixed[i][:, source_masks[i] == c], source_images[i][:, source_masks[i] == c])]
        assert len(took) == math.ceil(len(held) / 2)  # ClassMix's rule: half the source's classes, rounded up
        pasted = torch.isin(source_masks[i], torch.tensor(took))
        assert torch.equal(labels[i], torch.where(pasted, source_masks[i], masks[i]))
        assert torch.equal(mixed[i], torch.where(pasted, source_images[i], images[i]))
        picks.add(tuple(took))
    assert len(picks) > 5  # drawn anew for each crop
    again = class_mix(images, masks, listed, 1.0, torch.Generator().manual_seed(3), share=0.5)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], labels)
    whole = class_mix(images, masks, listed, 1.0, torch.Generator().manual_seed(3), share=1.0)
    assert torch.equal(whole[1], torch.where(torch.isin(source_masks, torch.tensor(listed)), source_masks, masks))


def test_nothing_changes_for_one_crop_no_classes_or_absent_classes():
    images, masks = batch()
    for args in ((images[:1], masks[:1], [1], 1.0), (images, masks, [], 1.0), (images, masks, [9], 1.0)):
        out_images, out_masks = class_mix(*args, torch.Generator().manual_seed(0))
        assert torch.equal(out_images, args[0]) and torch.equal(out_masks, args[1])


def test_bad_options_are_refused_by_name(data, tmp_path):  # noqa: F811
    with pytest.raises(PSPNetError, match="class_mix: .*class indices >= 0"):
        TrainConfig.from_dict({"class_mix": [2, -1]})
    with pytest.raises(PSPNetError, match="class_mix_p: 1.5 is not allowed; expected a probability"):
        TrainConfig.from_dict({"class_mix_p": 1.5})
    with pytest.raises(PSPNetError, match="class_mix_share: 0 is not allowed; expected a share in"):
        TrainConfig.from_dict({"class_mix_share": 0})
    with pytest.raises(PSPNetError, match=r"class_mix: classes \[3, 7\] do not exist; this dataset has classes 0-2"):
        train(tiny_config(data, tmp_path / "a", class_mix=[1, 3, 7]), progress=False)
    with pytest.raises(PSPNetError, match="batch_size >= 2"):
        train(tiny_config(data, tmp_path / "b", class_mix=[1], batch_size=1), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything is written


def test_a_class_mix_run_resumes_bit_identically_and_differs_from_one_without(data, tmp_path):  # noqa: F811
    assert_option_resumes_alike_and_matters(data, tmp_path, class_mix=[0, 1, 2], class_mix_p=0.5, class_mix_share=0.5)
