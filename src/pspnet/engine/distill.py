"""Knowledge distillation: frozen teachers' class probabilities as soft targets for the model being trained.

Why: an ensemble of bigger or differently trained models generalises better than the small model we ship, and
the small model learns more from the ensemble's per-pixel probabilities than from the hard labels alone
(Hinton et al. 2015, pixel by pixel as in Liu et al.'s structured distillation, CVPR 2019). The teachers only
run forward during training, so the shipped model's speed does not change.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.device import autocast
from pspnet.errors import PSPNetError
from pspnet.model.pspnet import PSPNet


def distill_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor,
                 temperature: float = 1.0, ignore_index: int = 255) -> torch.Tensor:
    """Mean KL(teacher || student) over the labelled pixels, times temperature² (Hinton's gradient scale).

    Pixels marked ``ignore_index`` are left out: after a crop they are mostly padding, where the teacher's
    guess teaches nothing.
    """
    valid = masks != ignore_index
    if not valid.any():
        return student_logits.sum() * 0.0  # keeps the graph; nothing to learn from this batch
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = (teacher_probs * (teacher_probs.clamp_min(1e-8).log() - log_student)).sum(1)
    return kl[valid].mean() * temperature**2


class Teachers(nn.Module):
    """Frozen models whose averaged softmax(logits / temperature) is the distillation target."""

    def __init__(self, sources: Sequence[str], student: PSPNet, weight: float = 1.0, temperature: float = 1.0,
                 scales: Sequence[float] = (1.0,)):
        super().__init__()
        models = []
        for source in sources:
            # eval_scale 1: a teacher reads crops at ``scales`` only, not at the reading saved with its weights
            # (the bundled file's 1.33x would otherwise enlarge every crop the teacher sees, unasked)
            teacher = PSPNet.from_pretrained(source, aux=False, eval_scale=1.0)
            _check_compatible(source, teacher.config, student.config)
            models.append(teacher.eval().requires_grad_(False))
        self.models = nn.ModuleList(models)
        self.weight, self.temperature, self.scales = weight, temperature, tuple(scales)
        self.align_corners = student.align_corners

    def train(self, mode: bool = True) -> "Teachers":
        return super().train(False)  # batch norm keeps its running statistics: a teacher never changes

    @torch.no_grad()
    def forward(self, images: torch.Tensor, precision: str) -> torch.Tensor:
        """Teacher probabilities at the images' size, averaged over teachers and ``scales``.

        Why scales: a model trained with scale jitter often reads frames best enlarged, at the square of the
        factor in compute; a teacher reading enlarged crops is a way to hand that reading to a student running at
        the frame's size. (On CamVid a 1.5x self-teacher did not: docs/sequences-and-augmentation.md.)
        """
        size = images.shape[-2:]
        probs = []
        for s in self.scales:
            x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear",
                                                      align_corners=self.align_corners)
            with autocast(images.device, precision):
                logits = [model(x) for model in self.models]
            for y in logits:
                p = F.softmax(y.float() / self.temperature, dim=1)
                if s != 1.0:
                    p = F.interpolate(p, size, mode="bilinear", align_corners=self.align_corners)
                probs.append(p)
        return torch.stack(probs).mean(0)

    def loss(self, images: torch.Tensor, student_logits: torch.Tensor, masks: torch.Tensor,
             precision: str) -> torch.Tensor:
        """``weight`` x the distillation loss of the student's logits on ``images``."""
        target = self(images, precision)
        return self.weight * distill_loss(student_logits, target, masks, self.temperature)


def _check_compatible(source: str, teacher: dict[str, Any], student: dict[str, Any]) -> None:
    """A teacher must label the same classes and read the same normalised pixels as the student."""
    for key, what in (("num_classes", "class count"), ("class_names", "class names"), ("mean", "input mean"),
                      ("std", "input std")):
        if key in teacher and key in student and teacher[key] != student[key]:
            raise PSPNetError(f"{source}: this teacher's {what} is {teacher[key]!r}, the model being trained has "
                              f"{student[key]!r}; a teacher must be trained on the same classes and normalisation")
