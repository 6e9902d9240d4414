"""MixStyle (Zhou et al., ICLR 2021): mix the feature statistics of two crops in the early backbone stages.

The mean and standard deviation of a feature map over its pixels, per channel, carry an image's "style"
(light, colour cast, texture contrast) more than its content. Replacing them, in training only, with a
random blend of the statistics of another crop of the batch shows the model the same scene in a look it
never saw, which is one way a drive, camera or scanner it was not trained on differs. It runs in the
stride-4 and stride-8 stages (the paper's best placement on ResNet: after res1 and res2; later stages hold
the class content) and is off in eval mode, so the exported model and its speed are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pspnet.errors import PSPNetError
from pspnet.model.pspnet import PSPNet
from pspnet.model.resnet import DilatedResNet
from pspnet.model.timm_backbone import TimmBackbone

ALPHA = 0.1  # Beta(0.1, 0.1): most blends sit near one of the two crops, as in the paper
EPS = 1e-6
STYLE_STRIDES = (4, 8)


def mix_style(x: torch.Tensor, p: float, alpha: float = ALPHA) -> torch.Tensor:
    """With probability ``p``, each crop's per-channel mean/std replaced by a Beta(alpha, alpha) blend of its own
    and those of another crop of the batch (a random permutation). Draws from torch's global RNG, which a
    checkpoint stores, so a resumed run mixes alike."""
    if x.shape[0] < 2 or torch.rand(()).item() >= p:
        return x
    b = x.shape[0]
    xf = x.float()
    mu = xf.mean(dim=(2, 3), keepdim=True).detach()
    sig = (xf.var(dim=(2, 3), keepdim=True) + EPS).sqrt().detach()  # the paper stops the gradient of the statistics
    lam = torch.distributions.Beta(alpha, alpha).sample((b, 1, 1, 1)).to(x.device)
    perm = torch.randperm(b, device=x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (((xf - mu) / sig) * sig_mix + mu_mix).to(x.dtype)


def style_stages(model: PSPNet) -> list[nn.Module]:
    """The backbone modules whose outputs are the stride-4 and stride-8 features."""
    backbone = model.backbone
    if isinstance(backbone, DilatedResNet):
        return [backbone.layer1, backbone.layer2]
    if isinstance(backbone, TimmBackbone):
        stages = backbone.body.feature_info.info  # every stage, picked or not; dilated ones repeat the stride
        first = {s: next((d["module"] for d in stages if d["reduction"] == s), None) for s in STYLE_STRIDES}
        if None not in first.values():
            return [backbone.body.get_submodule(name) for name in first.values()]
    raise PSPNetError(f"mix_style: backbone {model.config.get('backbone')!r} has no stride-4 and stride-8 stages")


def attach_mix_style(model: PSPNet, p: float, alpha: float = ALPHA) -> list[RemovableHandle]:
    """Mix styles after the stride-4 and stride-8 stages while the model trains; returns the hooks' handles."""

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return mix_style(output, p, alpha) if module.training else output

    return [stage.register_forward_hook(hook) for stage in style_stages(model)]
