"""Losses against hand-computed values, class weights and ignored pixels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pspnet.engine.losses import CEDiceLoss, CrossEntropyLoss, DiceLoss, FocalLoss, build_loss
from pspnet.errors import PSPNetError

# two pixels, two classes; softmax of (ln 3, 0) is (0.75, 0.25)
LOGITS = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]]).T.reshape(1, 2, 1, 2)
TARGET = torch.tensor([[[0, 0]]])  # pixel 0: p(class 0) = 0.75, pixel 1: p(class 0) = 0.25


def test_cross_entropy_by_hand_with_weights_and_ignore():
    expected = -(math.log(0.75) + math.log(0.25)) / 2
    assert CrossEntropyLoss()(LOGITS, TARGET).item() == pytest.approx(expected)
    ignored = torch.tensor([[[0, 255]]])
    assert CrossEntropyLoss()(LOGITS, ignored).item() == pytest.approx(-math.log(0.75))
    mixed = torch.tensor([[[0, 1]]])  # both pixels right at 0.75; weights 1 and 3 -> the mean stays log(0.75)
    assert CrossEntropyLoss([1.0, 3.0])(LOGITS, mixed).item() == pytest.approx(-math.log(0.75))


def test_dice_by_hand():
    # class 0: P = (0.75, 0.25), T = (1, 1): 2 * 1 / (1 + 2) = 2/3; class 1 absent from the target: left out
    assert DiceLoss(smooth=0)(LOGITS, TARGET).item() == pytest.approx(1 - 2 / 3)
    # target (0, 1): class 0 2*0.75/(1 + 1) = 0.75, class 1 2*0.75/(1 + 1) = 0.75
    mixed = torch.tensor([[[0, 1]]])
    assert DiceLoss(smooth=0)(LOGITS, mixed).item() == pytest.approx(0.25)
    # target (1, 0), smooth 1: class 0 (2 * 0.25 + 1) / (1 + 1 + 1) = 0.5, class 1 the same; weighted mean 0.5
    target = torch.tensor([[[1, 0]]])
    weighted = DiceLoss([3.0, 1.0], smooth=1)(LOGITS, target).item()
    assert weighted == pytest.approx(1 - 1.5 / 3)


def test_dice_ignores_pixels_and_is_zero_when_perfect():
    ignored = torch.tensor([[[0, 255]]])  # only pixel 0: P0 = 0.75, T0 = 1: 1.5/1.75; class 1 absent
    assert DiceLoss(smooth=0)(LOGITS, ignored).item() == pytest.approx(1 - 1.5 / 1.75)
    perfect = torch.tensor([[[100.0, -100.0], [-100.0, 100.0]]]).permute(0, 2, 1).reshape(1, 2, 1, 2)
    assert DiceLoss(smooth=0)(perfect, torch.tensor([[[0, 1]]])).item() == pytest.approx(0, abs=1e-6)
    all_ignored = torch.full((1, 1, 2), 255)
    loss = DiceLoss()(LOGITS.clone().requires_grad_(), all_ignored)
    assert loss.item() == 0 and not torch.isnan(loss)


def test_focal_by_hand_and_gamma_zero_is_cross_entropy():
    gamma = 2.0
    expected = -((0.25**gamma) * math.log(0.75) + (0.75**gamma) * math.log(0.25)) / 2
    assert FocalLoss(gamma=gamma)(LOGITS, TARGET).item() == pytest.approx(expected)
    logits, target = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    assert FocalLoss(w, gamma=0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, w, ignore_index=255).item(), rel=1e-5)
    assert FocalLoss(gamma=2)(logits, target).item() < CrossEntropyLoss()(logits, target).item()


def test_ce_dice_is_the_weighted_sum_and_every_loss_trains():
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    both = CEDiceLoss(ce_weight=0.5, dice_weight=2.0)(logits, target).item()
    assert both == pytest.approx(0.5 * CrossEntropyLoss()(logits, target).item()
                                 + 2.0 * DiceLoss()(logits, target).item(), rel=1e-6)
    for name in ("ce", "dice", "ce_dice", "focal"):
        x = logits.clone().requires_grad_()
        opt = torch.optim.SGD([x], lr=1.0)
        loss_fn = build_loss(name, weight=[1.0, 2.0, 1.0])
        first = loss_fn(x, target).item()
        for _ in range(20):
            opt.zero_grad()
            loss_fn(x, target).backward()
            opt.step()
        assert loss_fn(x, target).item() < first, name


def test_build_loss_names_and_errors():
    assert isinstance(build_loss("CE+Dice"), CEDiceLoss)
    assert build_loss("focal", gamma=1.0).gamma == 1.0
    with pytest.raises(PSPNetError, match="unknown loss 'lovasz'.*ce_dice"):
        build_loss("lovasz")
    with pytest.raises(PSPNetError, match="loss 'ce'"):
        build_loss("ce", gamma=2.0)
