"""Segmentation losses on (logits, target): cross-entropy, soft Dice, CE + Dice, focal; ``PSPNetLoss`` adds the aux head.

Which one: cross-entropy for balanced scenes (the paper's loss); class weights for rare classes that are
still a fair share of pixels; Dice (or CE + Dice, more stable early in training) when the class that
matters is thin or small, e.g. membranes, vessels or lesions, where per-pixel CE lets the majority win;
focal when many pixels are easy and a few hard ones decide the result. Every loss takes ``logits``
(N, C, H, W), ``target`` (N, H, W) class ids, per-class ``weight`` and an ``ignore_index`` whose pixels
count nowhere.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.errors import PSPNetError


def _weight(weight: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    return None if weight is None else torch.as_tensor(weight, dtype=torch.float32)


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy; with ``weight`` the mean is over the weights, as in ``F.cross_entropy``."""

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, ignore_index: int = 255):
        super().__init__()
        self.register_buffer("weight", _weight(weight), persistent=False)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, self.weight, ignore_index=self.ignore_index)


class DiceLoss(nn.Module):
    """Soft multi-class Dice: 1 - mean over classes of 2|P.T| / (|P| + |T|), P the softmax, T the one-hot target.

    Sums run over the whole batch (one Dice per class, stabler than per image on small crops). Classes
    absent from the batch's target are left out of the mean, so an empty class does not reward predicting
    nothing; ``weight`` weights the per-class terms. ``smooth`` is added to numerator and denominator.
    """

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, ignore_index: int = 255,
                 smooth: float = 1.0):
        super().__init__()
        self.register_buffer("weight", _weight(weight), persistent=False)
        self.ignore_index = ignore_index
        self.smooth = smooth

    def per_class(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Dice per class, whether the class is in the target), over the non-ignored pixels."""
        num_classes = logits.shape[1]
        probs = logits.float().softmax(1)
        keep = target != self.ignore_index
        onehot = F.one_hot(torch.where(keep, target, 0), num_classes).permute(0, 3, 1, 2).float()
        keep = keep[:, None].float()
        probs, onehot = probs * keep, onehot * keep
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        return (2 * inter + self.smooth) / (denom + self.smooth), onehot.sum(dims) > 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice, present = self.per_class(logits, target)
        w = present.float() if self.weight is None else present.float() * self.weight.to(dice.device)
        if w.sum() == 0:  # every pixel ignored: no gradient, no NaN
            return logits.float().sum() * 0
        return ((1 - dice) * w).sum() / w.sum()


class CEDiceLoss(nn.Module):
    """``ce_weight`` x cross-entropy + ``dice_weight`` x Dice: CE's steady gradients, Dice's care for thin classes."""

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, ignore_index: int = 255,
                 ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.ce = CrossEntropyLoss(weight, ignore_index)
        self.dice = DiceLoss(weight, ignore_index, smooth)
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce_weight * self.ce(logits, target) + self.dice_weight * self.dice(logits, target)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma, so easy pixels count less.

    ``gamma=0`` is exactly ``CrossEntropyLoss`` (the mean is over the weights of the kept pixels).
    """

    def __init__(self, weight: Sequence[float] | torch.Tensor | None = None, ignore_index: int = 255,
                 gamma: float = 2.0):
        super().__init__()
        self.register_buffer("weight", _weight(weight), persistent=False)
        self.ignore_index = ignore_index
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != self.ignore_index
        safe = torch.where(keep, target, 0)
        logp = logits.float().log_softmax(1).gather(1, safe[:, None])[:, 0]
        loss = -((1 - logp.exp()) ** self.gamma) * logp
        w = keep.float()
        if self.weight is not None:
            w = w * self.weight.to(logits.device)[safe]
        if w.sum() == 0:
            return logits.float().sum() * 0
        return (loss * w).sum() / w.sum()


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropyLoss,
    "cross_entropy": CrossEntropyLoss,
    "dice": DiceLoss,
    "ce_dice": CEDiceLoss,
    "ce+dice": CEDiceLoss,
    "focal": FocalLoss,
}


def build_loss(name: str, weight: Sequence[float] | torch.Tensor | None = None, ignore_index: int = 255,
               **kwargs: Any) -> nn.Module:
    """A loss by name (``ce``, ``dice``, ``ce_dice``, ``focal``); ``kwargs`` are its own options
    (``gamma`` for focal, ``smooth`` for Dice, ``ce_weight``/``dice_weight`` for CE + Dice)."""
    key = name.lower().replace("-", "_")
    if key not in LOSSES:
        raise PSPNetError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    try:
        return LOSSES[key](weight=weight, ignore_index=ignore_index, **kwargs)
    except TypeError as err:
        raise PSPNetError(f"loss {name!r}: {err}") from err


class PSPNetLoss(nn.Module):
    """The paper's training loss: ``criterion`` on the main logits plus ``aux_weight`` (0.4) times on the aux head's.

    Takes what ``model(x, return_aux=True)`` returns, ``(logits, aux)``, or plain logits (then the aux
    term is skipped), so one criterion serves train and eval loops. ``criterion`` defaults to
    cross-entropy with ``weight`` and ``ignore_index``; pass e.g. ``build_loss("ce_dice")`` for another.
    """

    def __init__(self, aux_weight: float = 0.4, weight: Sequence[float] | torch.Tensor | None = None,
                 ignore_index: int = 255, criterion: nn.Module | None = None):
        super().__init__()
        self.aux_weight = aux_weight
        self.criterion = criterion or CrossEntropyLoss(weight, ignore_index)

    def forward(self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        logits, aux = output if isinstance(output, tuple) else (output, None)
        loss = self.criterion(logits, target)
        if aux is not None and self.aux_weight:
            loss = loss + self.aux_weight * self.criterion(aux, target)
        return loss
