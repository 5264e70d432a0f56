"""The CAM classifier of S2C (METHOD.md §2): backbone → F (feat_dim channels) → CAMs → GAP logits.

``build_classifier(cam_cfg, num_classes, weights_dir)`` reads these keys of the config's ``cam``
section (any other keys — the trainer's — are ignored; defaults: :data:`s2c.defaults.CAM_DEFAULTS`):

=================  ============================================================
key                meaning
=================  ============================================================
backbone           resnet38d | efficientnet_lite0 | resnet50 | resnet101
pretrained         true (default ImageNet source, see s2c.models.backbones),
                   false (random), or a path to a weights file
output_stride      final feature stride
freeze_bn          all backbone BatchNorms in eval mode, affine params frozen
freeze_stem        no grads for the backbone stem (resnet38d: conv1a, b2, b2_1,
                   b2_2; efficientnet_lite0: stem + block 0; resnets: conv1, bn1)
feat_dim           D, channels of the feature map F
=================  ============================================================

``freeze_bn`` keeps the statistics the backbone has: with ``pretrained: false`` those are untrained
(mean 0, var 1) and activations grow unnormalised with depth (a random ResNet-101 overflows to
NaN). That is fine for building a model whose weights a checkpoint then replaces (inference,
tests); to train a backbone from scratch set ``freeze_bn: false``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import CAM_DEFAULTS, cfg_get
from ..errors import S2CError
from .backbones import Backbone, build_backbone


class EvalBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode: ``train()`` is a no-op. Produced by :func:`freeze_bn`
    by swapping the class of existing layers, so weights, state-dict keys and ``isinstance``
    checks are unchanged and the model still pickles/deep-copies."""

    def train(self, mode: bool = True) -> "EvalBatchNorm2d":
        return super().train(False)


def freeze_bn(module: nn.Module) -> nn.Module:
    """Freeze every BatchNorm2d in ``module``: running statistics fixed, affine params without grad.

    The layers are put in eval mode and stay there across later ``module.train()`` calls, so the
    ImageNet statistics are used even with the tiny batches of WSSS training. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            if type(m) is nn.BatchNorm2d:
                m.__class__ = EvalBatchNorm2d
            elif not isinstance(m, EvalBatchNorm2d):
                raise S2CError(f"freeze_bn: cannot freeze {type(m).__name__}; convert it to nn.BatchNorm2d first")
            m.train(False)
            m.requires_grad_(False)
    return module


def freeze_modules(modules: list[nn.Module]) -> None:
    """Stop gradients of ``modules`` (their BN statistics are handled by :func:`freeze_bn`)."""
    for m in modules:
        m.requires_grad_(False)


class CAMClassifier(nn.Module):
    """Multi-label classifier whose logits are the spatial mean of its class activation maps.

    Args:
        backbone: a :class:`Backbone` (``.out_channels`` = E).
        num_classes: C, foreground classes (label index 0..C-1).
        feat_dim: D, channels of F.

    forward(x (B,3,H,W)) → {
        "feats":  (B,D,h,w)  F = ReLU(1×1 conv E→D, no bias) of the backbone map,
        "cams":   (B,C,h,w)  1×1 conv D→C (no bias) of F, before any ReLU,
        "logits": (B,C)      GAP of the CAMs (== cams.mean((2,3)), linear so GAP commutes),
    } with h = ⌈H/os⌉ for the backbone's output stride os.
    """

    def __init__(self, backbone: Backbone, num_classes: int, feat_dim: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.proj = nn.Conv2d(backbone.out_channels, feat_dim, 1, bias=False)
        self.classifier = nn.Conv2d(feat_dim, num_classes, 1, bias=False)
        # Xavier init for the from-scratch layers, as the reference does for its new convs.
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.xavier_uniform_(self.classifier.weight)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def new_modules(self) -> list[nn.Module]:
        """Layers trained from scratch (``cam.lr_mult_new`` × the base LR; 1× in the reference)."""
        return [self.proj, self.classifier]

    def param_groups(self, lr_mult_new: float = 1.0) -> list[dict]:
        """Trainable parameters split for the optimizer.

        Returns ``[{"name": "backbone", "params": [...], "lr_mult": 1.0},
        {"name": "new", "params": [...], "lr_mult": lr_mult_new}]``; frozen parameters are left
        out. torch optimizers keep the extra keys, so the LR schedule can scale each group's
        base LR by ``group["lr_mult"]``.
        """
        new = [p for m in self.new_modules() for p in m.parameters() if p.requires_grad]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return [
            {"name": "backbone", "params": backbone, "lr_mult": 1.0},
            {"name": "new", "params": new, "lr_mult": float(lr_mult_new)},
        ]

    def cams_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """F (B,D,h,w) → CAMs (B,C,h,w)."""
        return self.classifier(feats)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = F.relu(self.proj(self.backbone(x)))
        cams = self.classifier(feats)
        return {"logits": cams.mean(dim=(2, 3)), "cams": cams, "feats": feats}


def read_cam_checkpoint(path) -> dict:
    """A train_cam ``model.pt``: ``{"model": state_dict, "cam_cfg": dict, "num_classes": C,
    "class_set": str}`` on CPU, its keys checked (S2CError naming the file otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise S2CError(f"model file not found: {path} (run train_cam first)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/foreign files
        raise S2CError(f"cannot read model file {path} ({e.__class__.__name__}); re-run train_cam") from None
    missing = [k for k in ("model", "cam_cfg", "num_classes") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise S2CError(f"model file {path} lacks key(s) {missing}; it is not a train_cam output")
    return ckpt


def cam_checkpoint(net: nn.Module, cam_cfg: dict, num_classes: int, class_set: str | None) -> dict:
    """What a train_cam ``model.pt`` holds (:func:`read_cam_checkpoint` reads it back): the weights,
    the cam section that built them, the class set, and the backbone's input normalisation."""
    norm = getattr(getattr(net, "backbone", None), "input_norm", None)
    return {"model": net.state_dict(), "cam_cfg": cam_cfg, "num_classes": num_classes, "class_set": class_set,
            "input_norm": norm() if callable(norm) else None}


def build_classifier(cam_cfg: dict, num_classes: int, weights_dir=None) -> CAMClassifier:
    """Build the CAM classifier from the ``cam`` config section (keys in the module docstring)."""
    cfg = cfg_get(cam_cfg or {}, CAM_DEFAULTS, "cam")
    if num_classes < 1:
        raise S2CError(f"num_classes must be ≥ 1, got {num_classes}; check data.class_set")
    backbone = build_backbone(cfg["backbone"], cfg["pretrained"], cfg["output_stride"], weights_dir)
    if cfg["freeze_stem"]:
        freeze_modules(backbone.stem_modules())
    if cfg["freeze_bn"]:
        freeze_bn(backbone)
    return CAMClassifier(backbone, num_classes, cfg["feat_dim"])
