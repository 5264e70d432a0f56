"""EfficientNet-Lite0 (model code from the ``efficientnet-lite-pytorch`` package) as a dense backbone.

The lightweight backbone of the demo/CPU configs. The package builds the network for a fixed
224×224 input (static "same" padding); we build it with ``image_size=None`` so it uses dynamic
TF-style "same" padding, which is correct for any input size *and* for dilated convolutions.

Output stride 32 → 16 → 8 by turning the stride-2 depthwise convolutions of the last stages into
stride 1 and dilating every later depthwise convolution (DeepLab's "atrous" trick): the kernels
are unchanged, so ImageNet weights stay valid.

Stage layout of Lite0 (block index: stride of its output): stem 2, blocks 0 → 2, 1-2 → 4,
3-4 → 8, 5-10 → 16, 11-15 → 32, head conv 1×1 → 1280 channels.
"""

from __future__ import annotations

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from .base import Backbone, check_output_stride


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 without its classifier.

    Args:
        output_stride: 8, 16 or 32.
        drop_connect_rate: stochastic-depth rate of the last block (scaled linearly per block,
            as in the package and the TF reference).

    Shapes: x (B,3,H,W) → "out" (B,1280,⌈H/os⌉,⌈W/os⌉), "low" (B,24,⌈H/4⌉,⌈W/4⌉).
    State-dict keys equal the package's (``_conv_stem.weight`` …) minus ``_fc.*``, so the
    package's ImageNet file loads directly.
    """

    head_prefixes = ("_fc.",)
    # The Lite weights were trained on (x - 127) / 128 of 0..255 pixels (TF's MEAN_RGB / STDDEV_RGB
    # for the Lite family), not ImageNet mean/std.
    input_mean = (127.0 / 255.0,) * 3
    input_std = (128.0 / 255.0,) * 3

    def __init__(self, output_stride: int = 32, drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        self.output_stride = check_output_stride("efficientnet_lite0", output_stride, (8, 16, 32))
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        self._conv_stem = net._conv_stem
        self._bn0 = net._bn0
        self._blocks = net._blocks
        self._conv_head = net._conv_head
        self._bn1 = net._bn1
        self.act = nn.ReLU6()  # Lite models use ReLU6 everywhere (quantisation-friendly)
        self.drop_connect_rate = drop_connect_rate
        self.out_channels = self._bn1.num_features
        self._dilate(self.output_stride)
        self.low_index = max(i for i, s in enumerate(self._block_strides) if s == 4)
        self.low_channels = self._blocks[self.low_index]._bn2.num_features

    def _dilate(self, output_stride: int) -> None:
        """Replace strides beyond ``output_stride`` by dilation; records each block's output stride."""
        stride, dilation = 2, 1  # after the stem
        self._block_strides = []
        for block in self._blocks:
            conv = block._depthwise_conv
            s = conv.stride[0]
            if s > 1 and stride * s > output_stride:
                # The former strided conv keeps the previous dilation; the ones after it see a
                # feature map that is s× denser, so their receptive field grows by s.
                conv.stride = [1, 1]
                conv.dilation = (dilation, dilation)
                dilation *= s
            else:
                stride *= s
                conv.dilation = (dilation, dilation)
            self._block_strides.append(stride)

    def stem_modules(self) -> list[nn.Module]:
        return [self._conv_stem, self._bn0, self._blocks[0]]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(self.adapt_input(x))))
        low = None
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / n)
            if i == self.low_index:
                low = x
        x = self.act(self._bn1(self._conv_head(x)))
        return {"low": low, "out": x}
