"""One optimisation step: forward (with the auxiliary head), loss, backward, optimizer and schedule."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from pspnet.device import autocast
from pspnet.engine.distill import Teachers
from pspnet.engine.losses import build_loss
from pspnet.errors import PSPNetError

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def forward_with_aux(net: nn.Module, images: torch.Tensor, has_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one place that knows the model's output API: logits, plus the aux logits when it has an aux head."""
    if has_aux:
        logits, aux = net(images, return_aux=True)
        return logits, aux
    return net(images), None


def build_criterion(name: str, weight: torch.Tensor | None, ignore_index: int = 255,
                    options: dict[str, Any] | None = None) -> Criterion:
    """The loss named by the config's ``loss`` key with its ``loss_options`` (``pspnet.engine.losses``),
    applied alike to the main and the aux head."""
    loss = build_loss(name, weight, ignore_index=ignore_index, **(options or {}))
    if weight is not None:
        loss.to(weight.device)
    return loss


def poly_lr(iteration: int, total: int, power: float = 0.9, warmup: int = 0) -> float:
    """Multiplier of the base lr: linear warm-up, then (1 - it/total)^power (semseg's poly schedule)."""
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    return (1 - iteration / total) ** power


def param_groups(model: nn.Module, head_lr_mult: float, lr: float) -> list[dict[str, Any]]:
    """Backbone at lr, the newly initialised heads (ppm, cls, aux, decoder) at lr x head_lr_mult."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    return [{"params": backbone, "lr": lr, "base_lr": lr},
            {"params": head, "lr": lr * head_lr_mult, "base_lr": lr * head_lr_mult}]


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise PSPNetError(f"optimizer: {name!r} is not allowed; expected sgd or adamw")


def train_step(net: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, criterion: Criterion, has_aux: bool,
               aux_weight: float, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
               device: torch.device, precision: str, teachers: Teachers | None = None) -> tuple[float, float]:
    """Forward, loss (main + aux_weight x aux [+ distillation from ``teachers``]), backward and step; returns
    (loss, main loss).

    A loss that is not finite raises before the weights are touched, so the last checkpoint stays good.
    """
    with autocast(device, precision):
        logits, aux = forward_with_aux(net, images, has_aux)
    main_loss = criterion(logits, masks)
    loss = main_loss + aux_weight * criterion(aux, masks) if aux is not None and aux_weight else main_loss
    if teachers is not None:
        loss = loss + teachers.loss(images, logits, masks, precision)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(value)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return value, main_loss.item()
