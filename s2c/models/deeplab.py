"""DeepLabV3 / V3+ segmentation network for the last WSSS stage (training on pseudo-labels).

``build_deeplab(seg_cfg, num_classes_with_bg, weights_dir)`` reads these keys of the ``seg``
config section (others are the trainer's and ignored; defaults: :data:`s2c.defaults.SEG_DEFAULTS`):

=================  ============================================================
key                meaning
=================  ============================================================
backbone           resnet38d | efficientnet_lite0 | resnet50 | resnet101
pretrained         true (default ImageNet source), false, or a weights file path
output_stride      8 or 16 (resnet38d: 8 only)
head               v3plus (ASPP + stride-4 decoder) | v3 (ASPP only)
freeze_bn          freeze the *backbone's* BatchNorms (the head's always train)
=================  ============================================================

The ASPP module is torchvision's (``torchvision.models.segmentation.deeplabv3.ASPP``). Its
image-pooling branch has a BatchNorm on a 1×1 map, so training needs batches of ≥ 2 images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead

from ..defaults import SEG_DEFAULTS, cfg_get
from ..errors import S2CError
from .backbones import Backbone, build_backbone
from .classifier import freeze_bn

# ASPP rates of the DeepLabV3 paper: (6, 12, 18) at output stride 16, doubled at 8.
_ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the final map, upsampled ×(os/4) and fused with the projected stride-4 map.

    Shapes: low (B,low_channels,h4,w4), out (B,in_channels,h,w) → logits (B,K,h4,w4).
    """

    def __init__(self, in_channels: int, low_channels: int, num_classes: int,
                 atrous_rates: tuple[int, ...], aspp_channels: int = 256, low_proj: int = 48) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, list(atrous_rates), aspp_channels)
        self.low_proj = nn.Sequential(
            nn.Conv2d(low_channels, low_proj, 1, bias=False), nn.BatchNorm2d(low_proj), nn.ReLU(inplace=True)
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(aspp_channels + low_proj, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )

    def forward(self, low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        x = self.aspp(out)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, self.low_proj(low)], dim=1))


class DeepLab(nn.Module):
    """DeepLabV3 or V3+ on any registered backbone.

    Args:
        backbone: a :class:`Backbone`.
        num_classes_with_bg: K (background + foreground classes).
        head: "v3plus" or "v3".
        atrous_rates: ASPP rates; default from the backbone's output stride.

    forward(x (B,3,H,W)) → logits (B,K,H,W), bilinearly upsampled to the input size.
    """

    def __init__(self, backbone: Backbone, num_classes_with_bg: int, head: str = "v3plus",
                 atrous_rates: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if head not in ("v3plus", "v3"):
            raise S2CError(f"config key seg.head must be 'v3plus' or 'v3', got {head!r}")
        self.backbone = backbone
        self.head_type = head
        self.num_classes = num_classes_with_bg
        rates = tuple(atrous_rates or _ASPP_RATES[backbone.output_stride])
        if head == "v3":
            self.head = DeepLabHead(backbone.out_channels, num_classes_with_bg, rates)
        else:
            self.head = DeepLabV3PlusHead(backbone.out_channels, backbone.low_channels, num_classes_with_bg, rates)

    def param_groups(self, lr_mult_head: float = 10.0) -> list[dict]:
        """``[{"name": "backbone", "params", "lr_mult": 1.0}, {"name": "head", "params", "lr_mult": lr_mult_head}]``
        (trainable parameters only)."""
        return [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad], "lr_mult": 1.0},
            {"name": "head", "params": [p for p in self.head.parameters() if p.requires_grad],
             "lr_mult": float(lr_mult_head)},
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(x)
        if self.head_type == "v3":
            logits = self.head(feats["out"])
        else:
            logits = self.head(feats["low"], feats["out"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_deeplab(seg_cfg: dict, num_classes_with_bg: int, weights_dir=None) -> DeepLab:
    """Build DeepLab from the ``seg`` config section (keys in the module docstring)."""
    cfg = cfg_get(seg_cfg or {}, SEG_DEFAULTS, "seg")
    if num_classes_with_bg < 2:
        raise S2CError(f"num_classes_with_bg must be ≥ 2 (background + classes), got {num_classes_with_bg}")
    backbone = build_backbone(cfg["backbone"], cfg["pretrained"], cfg["output_stride"], weights_dir)
    if cfg["freeze_bn"]:
        freeze_bn(backbone)
    return DeepLab(backbone, num_classes_with_bg, cfg["head"])
