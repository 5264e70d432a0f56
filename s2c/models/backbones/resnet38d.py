"""Wide ResNet-38 with dilation ("resnet38d"), the classifier backbone of PSA, IRN and S2C.

Architecture (Wu et al., "Wider or Deeper", model A1; pre-activation residual blocks):

    conv1a 3×3, 64                                          stride 1
    b2   (×3)  [3×3,128 → 3×3,128]                          stride 2
    b3   (×3)  [3×3,256 → 3×3,256]                          stride 4   ← "low"
    b4   (×6)  [3×3,512 → 3×3,512]                          stride 8
    b5   (×3)  [3×3,512 → 3×3,1024], dilation 2             stride 8
    b6         bottleneck 1×1,512 → 3×3,1024 → 1×1,2048, dilation 4, dropout 0.3
    b7         bottleneck 1×1,1024 → 3×3,2048 → 1×1,4096, dilation 4, dropout 0.5
    bn7 + ReLU                                              4096 channels, stride 8

Each block is pre-activation: BN+ReLU of the input feeds both the residual branch and (when the
shape changes) the 1×1 projection shortcut. The output stride is fixed at 8 (the original
network's last two strides are replaced by dilation), about 104M parameters.

Attribute names (``b4_3.bn_branch2b1`` …) follow the reference code, so PSA-style converted
``.pth`` files load directly; the original MXNet ``.params`` file is converted on load by
:mod:`s2c.models.mxnet_params`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, check_output_stride


class ResBlock(nn.Module):
    """Pre-activation basic block: two 3×3 convs.

    Args:
        in_channels, mid_channels, out_channels: widths (input, after the first conv, output).
        stride: stride of the first 3×3 conv and of the projection shortcut.
        first_dilation: dilation of the first 3×3 conv (defaults to ``dilation``); the first
            block of a newly dilated stage keeps the previous rate.
        dilation: dilation of the second 3×3 conv.

    Shapes: x (B,in,H,W) → (B,out,H/stride,W/stride).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 first_dilation: int | None = None, dilation: int = 1) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return shortcut + y


class BottleneckResBlock(nn.Module):
    """Pre-activation bottleneck: 1×1 (out/4) → 3×3 dilated (out/2) → 1×1 (out), with dropout.

    Shapes: x (B,in,H,W) → (B,out,H/stride,W/stride). Always uses a projection shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_channels // 4, out_channels // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return shortcut + y


class ResNet38d(Backbone):
    """The dilated wide ResNet-38 trunk (no classifier).

    Shapes: x (B,3,H,W) → "out" (B,4096,⌈H/8⌉,⌈W/8⌉), "low" = b3_2 (B,256,⌈H/4⌉,⌈W/4⌉).
    """

    # The MXNet ImageNet model's classifier; the converter drops it, a converted .pth may keep it.
    head_prefixes = ("linear1000", "fc8.")

    def __init__(self, output_stride: int = 8) -> None:
        super().__init__()
        self.output_stride = check_output_stride("resnet38d", output_stride, (8,))
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)

        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)

        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)

        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)

        self.b5 = ResBlock(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)

        self.b6 = BottleneckResBlock(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = BottleneckResBlock(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

        self.out_channels = 4096
        self.low_channels = 256

    def stem_modules(self) -> list[nn.Module]:
        # What the reference freezes ("not_training"): conv1a and the whole stride-2 stage.
        return [self.conv1a, self.b2, self.b2_1, self.b2_2]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.conv1a(x)
        x = self.b2_2(self.b2_1(self.b2(x)))
        low = self.b3_2(self.b3_1(self.b3(x)))
        x = self.b4(low)
        x = self.b4_5(self.b4_4(self.b4_3(self.b4_2(self.b4_1(x)))))
        x = self.b5_2(self.b5_1(self.b5(x)))
        x = self.b7(self.b6(x))
        return {"low": low, "out": F.relu(self.bn7(x))}
