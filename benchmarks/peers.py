"""Peer models from other libraries for ``pspnet benchmark --cases benchmarks/peers.py``.

segmentation_models_pytorch PSPNet (R50, R18) and torchvision DeepLabV3/FCN-R50, random init,
fp32 eager, on the same frame as pspnet's own cases. They live beside the benchmark scripts, not in
the library, so that pspnet never depends on those libraries
(``pip install segmentation-models-pytorch``; without it the smp rows are left out with a warning).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import nn

from pspnet.benchmark.cases import Case, frame
from pspnet.benchmark.measure import gflop
from pspnet.model.pspnet import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)


class PadTo(nn.Module):
    """Pad the input bottom/right to a multiple of ``multiple`` and crop the logits back (smp refuses other sizes)."""

    def __init__(self, net: nn.Module, multiple: int):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        return self.net(torch.nn.functional.pad(x, (0, pw, 0, ph)))[..., :h, :w]


class OutOnly(nn.Module):
    """torchvision segmentation models return a dict; keep the logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out["out"] if isinstance(out, dict) else out


def peer_models(num_classes: int) -> list[tuple[str, Callable[[], nn.Module], str]]:
    """(name, builder, note) of every peer whose library is installed."""
    models: list[tuple[str, Callable[[], nn.Module], str]] = []
    try:
        import segmentation_models_pytorch as smp

        for enc in ("resnet50", "resnet18"):
            models.append((f"smp PSPNet-{enc.replace('resnet', 'R')}",
                           lambda enc=enc: PadTo(smp.PSPNet(enc, encoder_weights=None, classes=num_classes), 8),
                           "encoder depth 3, no dilation (1/8 features from 3 stages); input zero-padded to a "
                           "multiple of 8, which smp requires"))
    except ImportError:
        logger.warning("segmentation_models_pytorch not installed (pip install segmentation-models-pytorch): "
                       "no smp peers")
    from torchvision.models import segmentation as tvseg

    models += [("torchvision DeepLabV3-R50", lambda: tvseg.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False), "output stride 8"),
               ("torchvision FCN-R50", lambda: tvseg.fcn_resnet50(
                   weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False), "output stride 8")]
    return models


def cases(num_classes: int, size: Sequence[int], device: torch.device) -> list[Case]:
    """One fp32 eager case per peer, seeded, on the sample frame normalised with ImageNet mean/std."""
    x = frame(size, IMAGENET_MEAN, IMAGENET_STD, device=device)
    out = []
    for name, build, note in peer_models(num_classes):
        torch.manual_seed(0)
        net = OutOnly(build().eval().to(device))

        def forward(x: torch.Tensor, m: nn.Module = net) -> torch.Tensor:
            with torch.inference_mode():
                return m(x)

        out.append(Case(name, "peer", forward, x, "fp32", gflop(net, x.shape), note=note))
    return out
