"""Networks: backbones (registry), the CAM classifier, DeepLab. Construction never loads
checkpoints of the full model; trainers/inference load those with ``load_state_dict``."""

from .backbones import BACKBONES, Backbone, build_backbone
from .classifier import CAMClassifier, build_classifier, cam_checkpoint, freeze_bn, read_cam_checkpoint
from .deeplab import DeepLab, build_deeplab

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
]
