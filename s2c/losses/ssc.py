"""SSC — SAM-segment contrasting (METHOD.md §4).

Every pixel of the crop is pulled towards the (detached) prototype of its own SAM segment and
pushed away from the other segments' prototypes of the same image: InfoNCE over cosine
similarities. Fully vectorised: prototypes come from one ``scatter_add`` over all pixels of the
batch, similarities from one ``bmm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Logit given to prototypes that do not exist in an image (empty / unassigned ids). Finite rather
# than -inf so an image without any segment cannot produce NaN through the ignored targets, and
# small enough in magnitude to survive fp16 autocast.
_ABSENT = -1.0e4


def ssc_loss(feats: torch.Tensor, se: torch.Tensor, temperature: float = 0.5,
             unassigned_prototype: bool = False) -> torch.Tensor:
    """Segment-contrastive loss.

    Args:
        feats: (B, D, h, w) feature map F (or the CAMs for the "logit level" ablation); gradients
            flow through the pixel features only — prototypes are detached (reference).
        se: (B, H, W) integer SE map at crop size; 0 = unassigned or crop padding, 1..N = segment
            ids (ids need not be contiguous; empty ids are ignored).
        temperature: divisor of the cosine similarities (paper 0.5; the reference code ≡ 1).
        unassigned_prototype: reference-code quirk — also use the mean feature of the unassigned
            pixels as a negative prototype. Unassigned pixels are never anchors either way.

    Returns:
        scalar loss: mean cross-entropy over all anchor pixels of the batch (0 with a graph when
        there are none).
    """
    if feats.dim() != 4 or se.dim() != 3 or feats.shape[0] != se.shape[0]:
        raise ValueError(f"ssc_loss: expected feats (B,D,h,w) and se (B,H,W); got {tuple(feats.shape)}, {tuple(se.shape)}")
    B, D = feats.shape[:2]
    H, W = se.shape[-2:]
    f = F.interpolate(feats, size=(H, W), mode="bilinear", align_corners=False)
    f = F.normalize(f.float(), dim=1).flatten(2)  # (B, D, HW)
    idx = se.flatten(1).long().clamp_min(0)  # (B, HW)
    K = int(idx.max()) + 1 if idx.numel() else 1

    proto = f.new_zeros(B, D, K).scatter_add_(2, idx[:, None].expand(-1, D, -1), f.detach())
    count = f.new_zeros(B, K).scatter_add_(1, idx, torch.ones_like(idx, dtype=f.dtype))
    proto = F.normalize(proto, dim=1)  # (B, D, K): the mean direction, re-normalised

    exists = count > 0
    if not unassigned_prototype:
        exists[:, 0] = False
    logits = torch.bmm(proto.transpose(1, 2), f) / temperature  # (B, K, HW)
    logits = logits.masked_fill(~exists[:, :, None], _ABSENT)
    if not bool((idx > 0).any()):
        return feats.sum() * 0.0
    return F.cross_entropy(logits, idx, ignore_index=0)


def reindex_segments(se: torch.Tensor) -> torch.Tensor:
    """Map the ids present in an SE map to 1..N (0 stays 0), keeping their order.

    Args:
        se: (..., H, W) integer map. Returns the same shape, int64.
    """
    ids, inv = torch.unique(se, return_inverse=True)
    # unique() sorts, so 0 (if present) is ids[0]; shift so present ids start at 1 either way
    offset = 0 if bool((ids == 0).any()) else 1
    return (inv + offset).reshape(se.shape).long()
