"""Dilated ResNet with the deep stem, laid out like hszhao/semseg so its checkpoints map by name.

The paper's backbone: three 3x3 convs (64-64-128) replace the 7x7 stem, and layer3/layer4 trade
stride for dilation 2/4 so the features keep 1/8 of the input size. ``stem_widths=(32, 32, 64)``
with ``contract_dilation=True`` gives mmsegmentation's ResNetV1c instead.
"""

from __future__ import annotations

import torch
from torch import nn

# The ImageNet statistics the backbones were trained with (RGB in 0..1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEPTHS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck: the stride sits on the 3x3 conv, as in semseg and mmseg."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stride_dilation(output_stride: int) -> tuple[list[int], list[int]]:
    """Strides and dilations of layer1..layer4 for an output stride of 8, 16 or 32."""
    table = {8: ([1, 2, 1, 1], [1, 1, 2, 4]), 16: ([1, 2, 2, 1], [1, 1, 1, 2]), 32: ([1, 2, 2, 2], [1, 1, 1, 1])}
    if output_stride not in table:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return table[output_stride]


class DilatedResNet(nn.Module):
    """ResNet feature extractor returning (layer3, layer4) features for the aux and main heads,
    preceded by layer1 (stride 4) with ``low_level`` for the skip decoder."""

    def __init__(
        self,
        depth: int = 50,
        output_stride: int = 8,
        stem_widths: tuple[int, int, int] = (64, 64, 128),
        contract_dilation: bool = False,
        low_level: bool = False,
    ):
        super().__init__()
        self.low_level = low_level
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        block = Bottleneck if depth >= 50 else BasicBlock
        w1, w2, w3 = stem_widths
        # Indices 0..9 match semseg's layer0 so its keys load unchanged.
        self.layer0 = nn.Sequential(
            nn.Conv2d(3, w1, 3, 2, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True),
            nn.Conv2d(w1, w2, 3, 1, 1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(inplace=True),
            nn.Conv2d(w2, w3, 3, 1, 1, bias=False), nn.BatchNorm2d(w3), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        strides, dilations = _stride_dilation(output_stride)
        inplanes = w3
        stages = []
        for planes, blocks, stride, dilation in zip((64, 128, 256, 512), DEPTHS[depth], strides, dilations):
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            first_dilation = max(dilation // 2, 1) if contract_dilation else dilation
            layer = [block(inplanes, planes, stride, first_dilation, downsample)]
            inplanes = planes * block.expansion
            layer += [block(inplanes, planes, 1, dilation) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = (256 * block.expansion, 512 * block.expansion)
        if low_level:
            self.channels = (64 * block.expansion, *self.channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c1 = self.layer1(self.layer0(x))
        c3 = self.layer3(self.layer2(c1))
        return (c1, c3, self.layer4(c3)) if self.low_level else (c3, self.layer4(c3))
