"""SSC — SAM-segment contrasting (METHOD.md §4).

Every pixel of the crop is pulled towards the (detached) prototype of its own SAM segment and
pushed away from the other segments' prototypes of the same image: InfoNCE over cosine
similarities.

The spec upsamples F (D channels) bilinearly to the crop and normalises every pixel. Done literally
that is the costliest part of a training step (a (B, D, H, W) tensor, forward and backward: 3× a
baseline step for D = 256 at 256² on a CPU). Bilinear upsampling U is linear with two taps per axis,
so the same numbers come from low-resolution quantities, without ever forming U·F:

- numerators  ⟨U·F(x), p_k⟩ = U·(Pᵀ F)(x): K channels upsampled instead of D;
- norms       ‖U·F(x)‖²: upsample F along x only (D × h × W), then the two row taps of x combine
  their squared norms and their one cross product;
- prototypes  Σ_{x∈S_k} U·F(x)/‖U·F(x)‖ = Σ_ij F_ij (Uᵀ M_k)_ij with M_k = 1[S_k]/‖U·F‖: the
  segment masks go down through Uᵀ (a scatter over the two row taps, then a matmul over columns).

Exact up to float rounding (tests compare loss and gradients with the literal per-segment loop).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Logit given to prototypes that do not exist in an image (empty / unassigned ids). Finite rather
# than -inf so an image without any segment cannot produce NaN through the ignored targets, and
# small enough in magnitude to survive fp16 autocast.
_ABSENT = -1.0e4


@functools.lru_cache(maxsize=64)
def _bilinear_taps(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype):
    """(W (n_out, n_in), i0, i1, a, b) of one axis; a handful of crop/feature sizes per run, so cached."""
    wm = _bilinear_matrix(n_in, n_out, device, dtype)
    return (wm, *_row_taps(wm))


def _bilinear_matrix(n_in: int, n_out: int, device, dtype) -> torch.Tensor:
    """(n_out, n_in) matrix of F.interpolate(..., mode="bilinear", align_corners=False) along one axis.

    Taken from interpolate itself (on a one-hot basis), so it matches PyTorch's rounding of the
    source coordinates exactly.
    """
    eye = torch.eye(n_in, device=device, dtype=dtype)[None, :, :, None]  # channels = basis vectors
    return F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)[0, :, :, 0].T


def _row_taps(wy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a (H, h) bilinear matrix into its two taps per row: i0, i1 = i0 or i0+1, weights a, b."""
    h = wy.shape[1]
    i0 = (wy != 0).to(torch.int8).argmax(1)  # first non-zero tap
    i1 = (i0 + 1).clamp_max(h - 1)
    rows = torch.arange(wy.shape[0], device=wy.device)
    a, b = wy[rows, i0], wy[rows, i1]
    b = torch.where(i1 == i0, torch.zeros_like(b), b)
    if not torch.allclose(a + b, torch.ones_like(a), atol=1e-5):
        raise AssertionError("bilinear interpolation matrix with more than two adjacent taps per row")
    return i0, i1, a, b


def ssc_loss(feats: torch.Tensor, se: torch.Tensor, temperature: float = 0.5,
             unassigned_prototype: bool = False, absent_prototypes: bool = False) -> torch.Tensor:
    """Segment-contrastive loss.

    Args:
        feats: (B, D, h, w) feature map F (or the CAMs for the "logit level" ablation); gradients
            flow through the pixel features only — prototypes are detached (reference).
        se: (B, H, W) integer SE map at crop size; 0 = unassigned or crop padding, 1..N = segment
            ids (ids need not be contiguous; empty ids are ignored unless ``absent_prototypes`` —
            the reference's scatter_mean makes every id up to the batch's largest a prototype; one
            absent from an image is a zero vector there, cosine 0, adding exp(0) = 1 to each of its
            anchors' softmax).
        temperature: divisor of the cosine similarities (paper 0.5; the reference code ≡ 1).
        unassigned_prototype: reference-code quirk — also use the mean feature of the unassigned
            pixels as a negative prototype. Unassigned pixels are never anchors either way.
        absent_prototypes: reference-code quirk — every id from 1 (0 too with
            ``unassigned_prototype``) to the largest id of the whole batch is a prototype; one absent
            from an image is a zero vector (logit 0), as the reference's ``scatter_mean`` makes it.
            Off, absent ids are left out of the softmax.

    Returns:
        scalar loss: mean cross-entropy over all anchor pixels of the batch (0 with a graph when
        there are none).
    """
    if feats.dim() != 4 or se.dim() != 3 or feats.shape[0] != se.shape[0]:
        raise ValueError(f"ssc_loss: expected feats (B,D,h,w) and se (B,H,W); got {tuple(feats.shape)}, {tuple(se.shape)}")
    idx = se.flatten(1).long().clamp_min(0)  # (B, HW)
    if not bool((idx > 0).any()):
        return feats.sum() * 0.0
    f = feats.float()
    B, D, h, w = f.shape
    H, W = se.shape[-2:]
    K = int(idx.max()) + 1
    _, i0, i1, a, b = _bilinear_taps(h, H, f.device, f.dtype)  # row taps of the (H, h) matrix
    wx = _bilinear_taps(w, W, f.device, f.dtype)[0]  # (W, w)

    # ‖U·F‖² per crop pixel: columns first (D × h × W), then the two row taps of each crop row
    fx = torch.einsum("bdiw,Xw->bdiX", f, wx)  # (B, D, h, W)
    sq = (fx * fx).sum(1)  # (B, h, W)
    cross = (fx[:, :, :-1] * fx[:, :, 1:]).sum(1)  # (B, h-1, W): rows i and i+1
    cross = torch.cat([cross, sq[:, -1:]], 1)  # a clamped tap (i1 == i0) pairs a row with itself
    a_, b_ = a[None, :, None], b[None, :, None]
    norm2 = a_ * a_ * sq[:, i0] + b_ * b_ * sq[:, i1] + 2 * a_ * b_ * cross[:, i0]  # (B, H, W)
    # F.normalize's eps; the clamp also keeps sqrt's gradient finite at 0
    norm = norm2.clamp_min(1e-24).sqrt().clamp_min(1e-12)  # (B, H, W)

    with torch.no_grad():
        # Prototypes: masks weighted by 1/‖U·F‖ taken down through Uᵀ (rows by scatter, columns by matmul)
        inv = (1.0 / norm).flatten(1)  # (B, HW)
        rows = torch.arange(H, device=f.device).repeat_interleave(W)
        cols = torch.arange(W, device=f.device).repeat(H)
        down = f.new_zeros(B, K * h * W)
        for tap, wt in ((i0, a), (i1, b)):
            pos = idx * (h * W) + (tap[rows] * W + cols)[None]
            down.scatter_add_(1, pos, inv * wt[rows][None])
        down = down.view(B, K, h, W) @ wx  # (B, K, h, w) = Uᵀ M_k
        proto = F.normalize(torch.einsum("bkij,bdij->bdk", down, f), dim=1)  # (B, D, K)
        count = torch.zeros(B, K, device=f.device).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
        exists = count > 0
        if absent_prototypes:
            # an id missing from an image is a prototype all the same: its prototype above is a zero
            # vector (no pixels, F.normalize of 0), so its logit is 0, exp(0) = 1 in every denominator
            exists = torch.ones_like(exists)
        if not unassigned_prototype:
            exists[:, 0] = False

        # left-out prototypes: zero vectors, so their logit below is exactly _ABSENT
        proto = proto * exists[:, None].to(f.dtype)

    num = torch.einsum("bdk,bdij->bkij", proto, f)  # (B, K, h, w)
    num = F.interpolate(num, size=(H, W), mode="bilinear", align_corners=False).flatten(2)  # (B, K, HW)
    scale = (1.0 / (norm * temperature)).flatten(1)[:, None]  # (B, 1, HW)
    bias = (~exists).to(f.dtype)[:, :, None] * _ABSENT  # (B, K, 1)
    logits = torch.addcmul(bias, num, scale)  # one fused pass over the (B, K, HW) logits
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
