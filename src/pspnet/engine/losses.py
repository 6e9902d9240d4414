"""Training losses. ``PSPNetLoss`` is the paper's: cross-entropy on the logits plus 0.4 x on the aux head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = 255


class PSPNetLoss(nn.Module):
    """Cross-entropy on the main logits plus ``aux_weight`` times the auxiliary head's (Zhao et al.: 0.4).

    Takes what ``model(x, return_aux=True)`` returns, ``(logits, aux)``, or plain logits (then the
    aux term is skipped), so one criterion serves train and eval loops.
    """

    def __init__(self, aux_weight: float = 0.4, weight: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        logits, aux = output if isinstance(output, tuple) else (output, None)
        loss = F.cross_entropy(logits.float(), target, self.weight, ignore_index=self.ignore_index)
        if aux is not None and self.aux_weight:
            loss = loss + self.aux_weight * F.cross_entropy(aux.float(), target, self.weight,
                                                            ignore_index=self.ignore_index)
        return loss
