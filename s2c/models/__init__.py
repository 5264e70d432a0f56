"""Networks: backbones (registry), the CAM classifier, DeepLab. Construction never loads
checkpoints of the full model; trainers/inference load those with ``load_state_dict``."""

from .backbones import BACKBONES, Backbone, build_backbone
from .classifier import CAMClassifier, build_classifier, cam_checkpoint, freeze_bn, read_cam_checkpoint
from .deeplab import DeepLab, build_deeplab


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (itself otherwise): what a checkpoint
    stores and what the prompting CAM runs without DDP's gradient hooks."""
    return model.module if hasattr(model, "module") else model


__all__ = [
    "BACKBONES",
    "Backbone",
    "build_backbone",
    "CAMClassifier",
    "build_classifier",
    "cam_checkpoint",
    "freeze_bn",
    "read_cam_checkpoint",
    "DeepLab",
    "build_deeplab",
    "unwrap",
]
