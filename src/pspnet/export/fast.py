"""Fast inference paths for a PSPNet in PyTorch: BN folding, channels_last, bf16/fp16, torch.compile.

``fast_model`` returns the module to call and ``fast_call`` runs it with the right input layout,
dtype and autocast, so a path is one (model, settings) pair that the benchmark and users share.
What each step buys on a CPU:

- BN folding removes one pass over every conv output (eager PyTorch does not fuse them).
- channels_last (NHWC) is oneDNN's native layout: no reorder before and after every conv.
- bf16 halves memory traffic and, with AMX/AVX512-BF16, runs convs on the bf16 units; converting
  the weights once (``bf16_weights``) avoids autocast re-casting them on every call. Never used
  where bf16 is emulated (see ``pspnet.runtime.native_bf16``).
- torch.compile (Inductor, with freezing) fuses the elementwise tails and prepacks weights; it
  pays only when the model is called many times, because compiling PSPNet-R50 takes minutes.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from pspnet.export.fold import fold_batchnorm
from pspnet.runtime import autocast


@dataclass(frozen=True)
class FastPath:
    """One inference configuration; ``precision`` is fp32, bf16 or fp16."""

    name: str
    precision: str = "fp32"
    fold_bn: bool = False
    channels_last: bool = False
    cast_weights: bool = False  # run the whole model in ``precision`` instead of autocast
    compile: bool = False


def fast_model(model: nn.Module, path: FastPath, device: torch.device | str = "cpu") -> nn.Module:
    """A copy of ``model`` prepared for ``path`` (folded, NHWC, cast, compiled as asked); eval mode."""
    device = torch.device(device)
    net = copy.deepcopy(model).eval().to(device)
    if path.fold_bn:
        net = fold_batchnorm(net, inplace=True)
    if path.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if path.cast_weights and path.precision != "fp32":
        net = net.to(torch.bfloat16 if path.precision == "bf16" else torch.float16)
    for p in net.parameters():
        p.requires_grad_(False)
    if path.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold weights, prepack them for oneDNN
        net = torch.compile(net, dynamic=False)
    return net


def fast_call(net: nn.Module, x: torch.Tensor, path: FastPath) -> torch.Tensor:
    """Logits of ``net`` (prepared by ``fast_model``) for ``x`` under ``path``'s layout and precision."""
    if path.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    if path.cast_weights and path.precision != "fp32":
        x = x.to(torch.bfloat16 if path.precision == "bf16" else torch.float16)
    elif path.precision != "fp32":
        ctx = autocast(x.device, path.precision)
    with torch.inference_mode(), ctx:
        return net(x)
