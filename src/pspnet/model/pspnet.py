"""PSPNet (Zhao et al., CVPR 2017) in one file: pyramid pooling and heads on a dilated backbone.

Defaults follow the paper and hszhao/semseg: dilated ResNet-50 with the deep stem (output stride
8), bins (1, 2, 3, 6), a 512-channel 3x3 classifier with Dropout2d(0.1), and an auxiliary FCN head on
layer3 that only runs in training (loss weight 0.4). Module names match semseg's, under ``backbone.``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pspnet.errors import PSPNetError
from pspnet.meta import SCALE_RANGE, default_class_names, default_palette
from pspnet.model.hub import PSPNetHubMixin
from pspnet.model.resnet import DEPTHS, IMAGENET_MEAN, IMAGENET_STD, DilatedResNet
from pspnet.model.timm_backbone import TimmBackbone

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PPM", "PSPNet", "SkipDecoder", "replace_head"]


class PoolBatchNorm(nn.BatchNorm2d):
    """BatchNorm that survives one value per channel (bin 1, batch 1) in training.

    Batch statistics of a single value are undefined and plain BatchNorm raises. Here such a batch
    is normalised with the running statistics, which it does not update; any larger batch trains
    as usual. The state dict is a plain BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class PPM(nn.Module):
    """Pyramid pooling: pool to each bin size, 1x1 conv to in/len(bins) channels, upsample, concat."""

    def __init__(self, in_channels: int, bins: Sequence[int], align_corners: bool = True):
        super().__init__()
        if in_channels % len(bins):
            raise ValueError(f"{in_channels} input channels do not split evenly over {len(bins)} bins")
        reduction = in_channels // len(bins)
        self.align_corners = align_corners
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduction, 1, bias=False),
                PoolBatchNorm(reduction),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = in_channels * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out = [x] + [F.interpolate(f(x), size, mode="bilinear", align_corners=self.align_corners) for f in self.features]
        return torch.cat(out, 1)


def segmentation_head(in_channels: int, mid_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3x3 conv -> BN -> ReLU -> Dropout2d -> 1x1 conv; indices 0, 1, 4 hold weights as in semseg."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(mid_channels, num_classes, 1),
    )


class SkipDecoder(nn.Module):
    """Optional, not in the paper: fuse the pyramid head with stride-4 backbone features.

    At output stride 16 a 2-5 px pole or sign post covers a fraction of one cell, and dilating the
    backbone to stride 8 costs 3.6x the FLOPs. DeepLabV3+'s decoder instead upsamples the head's
    features to 1/4 and refines them with low-level ones: the 1x1 reduce runs at 1/16, one 3x3 conv
    at 1/4. ``fuse`` is a ``segmentation_head``, so its index 4 is the classifier as in ``cls``.
    """

    def __init__(self, head_channels: int, low_channels: int, channels: int, num_classes: int, dropout: float,
                 align_corners: bool = True, skip_channels: int = 48):
        super().__init__()
        self.align_corners = align_corners
        self.reduce = nn.Sequential(nn.Conv2d(head_channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                    nn.ReLU(inplace=True))
        self.skip = nn.Sequential(nn.Conv2d(low_channels, skip_channels, 1, bias=False),
                                  nn.BatchNorm2d(skip_channels), nn.ReLU(inplace=True))
        self.fuse = segmentation_head(channels + skip_channels, channels, num_classes, dropout)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.fuse(torch.cat([x, self.skip(low)], 1))


class PSPNet(nn.Module, PSPNetHubMixin, library_name="pspnet", tags=["semantic-segmentation", "pspnet"]):
    """Pyramid Scene Parsing Network.

    ``forward(x)`` takes normalised images (N, 3, H, W) of any size and returns logits
    (N, num_classes, H, W) in train and eval mode; ``forward(x, return_aux=True)`` returns
    ``(logits, aux_logits)`` for the auxiliary loss.
    ``eval_scale``: in eval mode the input is resized by this factor before the backbone (the logits still
    come back at the input size). Why: a model trained on scale-jittered crops sees objects larger than a
    frame shows them and reads frames best somewhat enlarged (Touvron et al., "Fixing the train-test
    resolution discrepancy", 2019); the bundled CamVid model reads 360x480 frames at 1.33x.
    ``fallback_eval_scale``: the reading ``precision="auto"`` uses where the head's int8 convs do not run, for a
    model whose ``eval_scale`` only fits its speed budget with them (the bundled CamVid model: 1.0); None: always
    ``eval_scale``. Setting ``eval_scale`` when loading clears it.
    ``int8_ranges``: written by ``pspnet.inference.int8.calibrate_int8``, not by hand.
    Every constructor argument is JSON-serialisable and saved with the weights, so a weights file
    alone rebuilds the model.
    """

    def __init__(
        self,
        num_classes: int = 21,
        layers: int = 50,
        backbone: str | None = None,
        output_stride: int = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux: bool = True,
        align_corners: bool = True,
        head_channels: int = 512,
        aux_channels: int = 256,
        decoder_channels: int = 0,
        stem_widths: Sequence[int] = (64, 64, 128),
        contract_dilation: bool = False,
        pretrained_backbone: bool | str = False,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        mask_values: Sequence[int] | None = None,
        eval_scale: float = 1.0,
        fallback_eval_scale: float | None = None,
        int8_ranges: dict[str, Any] | None = None,
    ):
        super().__init__()
        for name, scale in (("eval_scale", eval_scale), ("fallback_eval_scale", fallback_eval_scale)):
            if scale is not None and not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
                raise ValueError(f"{name} must be in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}], got {scale}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if mask_values is not None and len(mask_values) != num_classes:
            raise ValueError(f"{len(mask_values)} mask values for {num_classes} classes")
        backbone = backbone or f"resnet{layers}"
        self.config: dict[str, Any] = {
            "num_classes": num_classes, "backbone": backbone, "output_stride": output_stride,
            "bins": list(bins), "dropout": dropout, "aux": aux, "align_corners": align_corners,
            "head_channels": head_channels, "aux_channels": aux_channels, "decoder_channels": decoder_channels,
            "stem_widths": list(stem_widths),
            "contract_dilation": contract_dilation,
            "class_names": list(class_names) if class_names else default_class_names(num_classes),
            "palette": [list(c) for c in palette] if palette else default_palette(num_classes),
            "mean": list(mean), "std": list(std),
            # the stored mask value of each class (e.g. [0, 255]), so outputs go back in the user's values
            "mask_values": [int(v) for v in mask_values] if mask_values is not None else None,
            "eval_scale": float(eval_scale),
            "fallback_eval_scale": None if fallback_eval_scale is None else float(fallback_eval_scale),
            # calibrated input ranges of the head's int8 convs (pspnet.inference.int8), with a digest of the weights
            "int8_ranges": int8_ranges,
        }
        resnet_depth = {f"resnet{d}": d for d in DEPTHS}.get(backbone)
        if resnet_depth is not None:
            if pretrained_backbone:
                raise PSPNetError(
                    "ImageNet weights for the deep-stem ResNet come from semseg/mmseg checkpoints: "
                    "use PSPNet.from_pretrained(path) or `pspnet convert`"
                )
            self.backbone = DilatedResNet(resnet_depth, output_stride, tuple(stem_widths), contract_dilation,
                                          low_level=decoder_channels > 0)
        else:
            self.backbone = TimmBackbone(backbone, output_stride, pretrained_backbone, low_level=decoder_channels > 0)
        aux_in, feat_in = self.backbone.channels[-2:]
        self.align_corners, self.eval_scale = align_corners, float(eval_scale)
        self.ppm = PPM(feat_in, bins, align_corners)
        self.cls = segmentation_head(self.ppm.out_channels, head_channels, num_classes, dropout)
        self.decoder = None
        if decoder_channels:  # cls keeps its 3x3 conv (same keys), the decoder classifies
            self.cls = self.cls[:3]
            self.decoder = SkipDecoder(head_channels, self.backbone.channels[0], decoder_channels, num_classes,
                                       dropout, align_corners)
        self.aux = segmentation_head(aux_in, aux_channels, num_classes, dropout) if aux else None

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]

    @property
    def classifier_head(self) -> nn.Sequential:
        """The head whose index 4 is the final 1x1 conv (``cls``, or the decoder's ``fuse``)."""
        return self.decoder.fuse if self.decoder is not None else self.cls

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, classes, H, W) at the input size, in train and eval mode alike.

        ``return_aux=True`` also returns the auxiliary head's logits, ``(logits, aux)``, for the
        paper's training loss (``pspnet.engine.losses.PSPNetLoss``); it needs ``aux=True``.
        """
        if return_aux and self.aux is None:
            raise PSPNetError("return_aux=True needs a model built with aux=True")
        size = x.shape[-2:]
        if not self.training and self.eval_scale != 1.0:
            # on the NCHW copy: a 3-channel channels_last resize is ~3x slower on CPU
            x = F.interpolate(x.contiguous(), scale_factor=self.eval_scale, mode="bilinear",
                              align_corners=self.align_corners)
        features = self.backbone(x)
        c_aux, c_last = features[-2:]
        logits = self.cls(self.ppm(c_last))
        if self.decoder is not None:
            logits = self.decoder(logits, features[0])
        # For 8n+1 inputs this is exactly semseg's zoom to (H-1)/8*8+1; any other size works too. In fp32 under
        # bf16 autocast: closer to the fp32 model's labels, and faster on CPU than bf16's resize.
        logits = F.interpolate(logits.float(), size, mode="bilinear", align_corners=self.align_corners)
        if return_aux:
            aux = F.interpolate(self.aux(c_aux).float(), size, mode="bilinear", align_corners=self.align_corners)
            return logits, aux
        return logits


def replace_head(model: PSPNet, num_classes: int, class_names: Sequence[str] | None = None,
                 palette: Sequence[Sequence[int]] | None = None) -> PSPNet:
    """Swap the final 1x1 convs for ``num_classes`` outputs, keeping every other weight (fine-tuning)."""
    for head in (model.classifier_head, model.aux):
        if head is not None:
            old = head[4]
            head[4] = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
    model.config.update(
        num_classes=num_classes,
        class_names=list(class_names) if class_names else default_class_names(num_classes),
        palette=[list(c) for c in palette] if palette else default_palette(num_classes),
    )
    return model
