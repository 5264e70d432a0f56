"""torchvision ResNet-50/101 as dilated dense backbones (``replace_stride_with_dilation``)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .base import Backbone, check_output_stride

# output stride → replace_stride_with_dilation for (layer2, layer3, layer4)
_DILATION = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}


class TorchvisionResNet(Backbone):
    """A torchvision ResNet without avgpool/fc.

    Args:
        arch: "resnet50" or "resnet101".
        output_stride: 8, 16 or 32.

    Shapes: x (B,3,H,W) → "out" (B,2048,~H/os,~W/os), "low" = layer1 (B,256,~H/4,~W/4).
    State-dict keys equal torchvision's (``conv1.weight``, ``layer1.0…``) minus ``fc.*``.
    """

    head_prefixes = ("fc.",)

    def __init__(self, arch: str = "resnet101", output_stride: int = 8) -> None:
        super().__init__()
        self.output_stride = check_output_stride(arch, output_stride, _DILATION)
        net = getattr(torchvision.models, arch)(
            weights=None, replace_stride_with_dilation=_DILATION[self.output_stride]
        )
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features
        self.low_channels = self.out_channels // 8

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        out = self.layer4(self.layer3(self.layer2(low)))
        return {"low": low, "out": out}
