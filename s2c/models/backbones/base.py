"""What every backbone provides, and the checkpoint-loading helpers they share.

A backbone maps a normalised image (B, 3, H, W) to a dense feature map at ``output_stride``.
Construction never loads weights; the builders in :mod:`s2c.models.backbones` do that afterwards
through :func:`load_backbone_weights`, which refuses any mismatch with a one-line S2CError instead
of silently training from a half-initialised network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ...data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ...errors import S2CError


class Backbone(nn.Module):
    """Base class. Subclasses set the attributes below and implement ``forward_features``.

    Attributes:
        out_channels: channels of the final map.
        low_channels: channels of the stride-4 map (DeepLabV3+ decoder input).
        output_stride: H / h of the final map.
        head_prefixes: state-dict key prefixes of the ImageNet classifier head, which backbones
            drop; those keys are ignored when loading an ImageNet checkpoint.
    """

    out_channels: int
    low_channels: int
    output_stride: int
    head_prefixes: tuple[str, ...] = ()
    #: The per-channel mean / std (0..1 units) the backbone's weights were trained with. The data
    #: pipeline always normalises with ImageNet's (s2c.data.transforms.normalize); a backbone whose
    #: weights expect another convention re-maps its input in :meth:`adapt_input`, so one image
    #: tensor serves every backbone and SAM (which denormalises it) alike.
    input_mean: tuple[float, float, float] = IMAGENET_MEAN
    input_std: tuple[float, float, float] = IMAGENET_STD

    def input_norm(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}``: recorded in model.pt beside the weights."""
        return {"mean": list(self.input_mean), "std": list(self.input_std)}

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,3,H,W) normalised with ImageNet mean/std → normalised with this backbone's."""
        if self.input_mean == IMAGENET_MEAN and self.input_std == IMAGENET_STD:
            return x
        src_m, src_s = x.new_tensor(IMAGENET_MEAN), x.new_tensor(IMAGENET_STD)
        dst_m, dst_s = x.new_tensor(self.input_mean), x.new_tensor(self.input_std)
        scale = (src_s / dst_s).view(1, 3, 1, 1)
        shift = ((src_m - dst_m) / dst_s).view(1, 3, 1, 1)
        return x * scale + shift

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B,3,H,W) → {"low": (B,low_channels,~H/4,~W/4), "out": (B,out_channels,~H/os,~W/os)}."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,3,H,W) → (B,out_channels,~H/os,~W/os)."""
        return self.forward_features(x)["out"]

    def stem_modules(self) -> list[nn.Module]:
        """Modules frozen by ``freeze_stem`` (the layers up to the first stride-2 stage output)."""
        raise NotImplementedError


def check_output_stride(name: str, output_stride: int, allowed: Iterable[int]) -> int:
    allowed = tuple(allowed)
    if output_stride not in allowed:
        raise S2CError(
            f"output_stride={output_stride} is not supported by backbone '{name}'; "
            f"set output_stride to one of {list(allowed)}"
        )
    return int(output_stride)


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict saved with ``torch.save``; unwraps {"state_dict"|"model": ...}."""
    path = Path(path)
    if not path.is_file():
        raise S2CError(f"backbone weights not found: {path} (fix the 'pretrained' path in the config)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/pickled-object files
        raise S2CError(
            f"cannot read backbone weights {path} ({e.__class__.__name__}); expected a torch state "
            "dict saved with torch.save(model.state_dict())"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise S2CError(f"{path} is not a state dict of tensors; save model.state_dict() instead")
    # DataParallel/DDP checkpoints prefix every key with "module."
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_backbone_weights(backbone: Backbone, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``backbone``; every backbone tensor must be present with its shape.

    Keys under ``backbone.head_prefixes`` (the ImageNet classifier) are ignored; BatchNorm's
    ``num_batches_tracked`` counters may be absent (converted checkpoints lack them).
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(backbone.head_prefixes)}
    own = backbone.state_dict()
    bad_shape = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if bad_shape:
        k = bad_shape[0]
        raise S2CError(
            f"{source}: tensor '{k}' has shape {tuple(state_dict[k].shape)}, the backbone expects "
            f"{tuple(own[k].shape)} ({len(bad_shape)} mismatches); the file is for another architecture"
        )
    res = backbone.load_state_dict(state_dict, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or res.unexpected_keys:
        raise S2CError(
            f"{source} does not match the backbone: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(res.unexpected_keys)} unexpected keys "
            f"(e.g. {res.unexpected_keys[:3]}); pass the ImageNet checkpoint of this backbone"
        )
