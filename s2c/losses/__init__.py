"""Loss pieces of the S2C CAM trainer: L = L_CLS + L_SSC + L_CPM (METHOD.md §2, §4, §5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpm import (cpm_loss, cpm_pseudo_label, find_peaks, find_peaks_reference, multiscale_prompt_cams,
                  normalize_cams, sam_alpha)
from .oracle import oracle_prompts
from .ssc import reindex_segments, ssc_loss


def cls_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_CLS: multi-label BCE-with-logits. logits, labels: (B, C)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


__all__ = ["cls_loss", "ssc_loss", "reindex_segments", "normalize_cams", "multiscale_prompt_cams",
           "find_peaks", "find_peaks_reference", "sam_alpha", "cpm_pseudo_label", "cpm_loss",
           "oracle_prompts"]
