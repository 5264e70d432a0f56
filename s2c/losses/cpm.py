"""CPM — CAM-based prompting module (METHOD.md §5), as pure tensor functions.

Pipeline per image and present class c: prompting CAM → peaks (local maxima + global max) → one
multi-point SAM prompt (done by the caller on the cached or online embedding) → mask M^c and
α_sam^c → confidence α^c = α_sam^c · mean(A^c over M^c) → pseudo-label Ŝ (0 = background,
c+1 = class c, 255 = ignore) → CE between [1 − max_c A; A] and Ŝ.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from segment_anything.utils.amg import calculate_stability_score
from torchvision.ops import batched_nms

from ..defaults import ALPHA_SAM, BACKGROUND, CONFIDENCE, LOSS_MODES


def normalize_cams(cams: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Reference CAM normalisation: ReLU, divide each class by its max, upsample, keep labelled classes.

    Args:
        cams: (B, C, h, w) raw CAMs. labels: (B, C) multi-hot. size: crop (H, W).
    Returns:
        (B, C, H, W) in [0, 1]; absent classes are 0. Differentiable.
    """
    B, C = cams.shape[:2]
    bi, ci = (labels > 0.5).nonzero(as_tuple=True)
    a = F.relu(cams[bi, ci])  # (P, h, w): absent classes are zero anyway, so only present ones are upsampled
    a = a / (a.flatten(1).max(1).values[:, None, None] + 1e-5)
    a = F.interpolate(a[None], size=size, mode="bilinear", align_corners=False)[0]
    out = a.new_zeros(B, C, *size)
    out[bi, ci] = a * labels[bi, ci, None, None].to(a.dtype)
    return out


@torch.no_grad()
def multiscale_prompt_cams(forward_cams: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                           labels: torch.Tensor, scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
                           chunk: int | None = None) -> torch.Tensor:
    """The reference's prompting CAM: ReLU CAMs at several scales, summed, max-normalised per class.

    Args:
        forward_cams: images (b,3,h,w) → raw CAMs (b,C,h',w'), each image independent of the others
            (eval mode, frozen BatchNorm), so running it on slices of the batch changes nothing.
        images: (B, 3, H, W) normalised crops. labels: (B, C).
        chunk: images per ``forward_cams`` call (None: the whole batch). On CPU, image by image
            keeps the activations of the upscaled batch in cache.
    Returns:
        (B, C, H, W) in [0, 1], absent classes 0, no gradient.
    """
    B, _, H, W = images.shape
    acc = None
    for s in scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=True)
        raw = torch.cat([forward_cams(c).float() for c in x.split(chunk or B)])
        cam = F.relu(F.interpolate(raw, size=(H, W), mode="bilinear", align_corners=False))
        acc = cam if acc is None else acc + cam
    acc = acc * labels[:, :, None, None].to(acc.dtype)
    return acc / (F.adaptive_max_pool2d(acc, 1) + 1e-5)


def _sliding_max(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Max over the window [i − radius, i + radius] along ``dim`` (outside counts as −inf).

    Same values as ``max_pool2d`` with that window, padding ``radius`` and stride 1, but by
    doubling (log₂ of the window in elementwise maxima instead of one comparison per window
    element), which pays off for windows as wide as the reference's 41 px.
    """
    if radius <= 0:
        return x
    x = x.transpose(dim, -1)
    n, k = x.shape[-1], 2 * radius + 1
    m, s = F.pad(x, (radius, radius), value=float("-inf")), 1
    while 2 * s <= k:  # m[i] = max over [i, i + 2s − 1] of the padded row
        m, s = torch.maximum(m[..., :-s], m[..., s:]), 2 * s
    out = torch.maximum(m[..., :n], m[..., k - s: k - s + n])  # two overlapping windows of s cover k
    return out.transpose(dim, -1)


def find_peaks(cam: torch.Tensor, labels: torch.Tensor, min_distance: int = 20, threshold: float = 0.5,
               single_peak: bool = False, valid: torch.Tensor | None = None,
               exclude_border: bool = True) -> list[list[tuple[int, torch.Tensor]]]:
    """Prompt points per present class: the global max plus local maxima above ``threshold``.

    Local maxima follow the reference (3×3 max-filter, then ``peak_local_max(min_distance)``,
    which also drops peaks within ``min_distance`` of the border): a max-pool local-max filter,
    then spacing enforced by NMS on min_distance-wide boxes — the global max wins ties, so it
    suppresses local peaks next to it, where the reference drops its first local peak
    (``peaks_valid[1:]``). Deliberate departures from the reference (measured by
    bench/reference_parity.py): a peak is the CAM's own maximum, where the reference keeps the
    top-left pixel of the 3×3 plateau of the max-filtered CAM (usually 1 px up and left) and tests
    ``threshold`` at that pixel; and ``peaks_valid[1:]`` there drops the strongest local peak even
    when the global max is not one of them (e.g. it lies within ``min_distance`` of the border).
    :func:`find_peaks_reference` (``cam.cpm.peak_rule: reference``) is the reference's rule as is.

    Args:
        cam: (B, C, H, W) prompting CAM, max-normalised to [0, 1].
        labels: (B, C) multi-hot; only present classes get peaks.
        valid: (B, H, W) bool, crop pixels that come from the image (peaks never land in padding).
    Returns:
        per image, a list of (class index c, points (K_c, 2) float (x, y) pixel centres in crop coords).
    """
    B, C, H, W = cam.shape
    present = labels > 0.5  # (B, C)
    bi, ci = present.nonzero(as_tuple=True)
    sub = cam.detach()[bi, ci].float()  # (P, H, W): only present classes are ever searched
    if valid is not None:
        v = valid[bi]
        sub = sub * v.to(sub.dtype)
        # -1 outside so a flat (all-zero) CAM still puts its global max inside the image
        gidx = torch.where(v, sub, -1.0).flatten(1).argmax(-1)  # (P,)
    else:
        gidx = sub.flatten(1).argmax(-1)
    g_y, g_x = gidx // W, gidx % W
    ys, xs, groups, scores = [g_y], [g_x], [bi * C + ci], [torch.full_like(g_y, 3.0, dtype=sub.dtype)]

    if not single_peak and len(bi):
        # the (2d+1)² max-filter as two 1-D sliding maxima: a 41×41 window on every class map of
        # a 256² batch otherwise costs more than the whole training step
        filt = F.max_pool2d(sub[:, None], 3, 1, 1)[:, 0]
        win = _sliding_max(_sliding_max(filt, min_distance, -1), min_distance, -2)
        is_max = (filt == win) & (sub > threshold)
        if exclude_border and min_distance > 0:
            border = torch.ones(H, W, dtype=torch.bool, device=cam.device)
            border[min_distance:H - min_distance, min_distance:W - min_distance] = False
            is_max &= ~border
        pi, ly, lx = is_max.nonzero(as_tuple=True)
        # score by the unfiltered CAM so the true maximum of a 3×3 plateau wins the NMS below
        ys.append(ly), xs.append(lx), groups.append(bi[pi] * C + ci[pi]), scores.append(sub[pi, ly, lx])

    ys, xs, groups, scores = (torch.cat(t) for t in (ys, xs, groups, scores))
    pts = torch.stack([xs, ys], 1).to(sub.dtype) + 0.5
    half = max(min_distance, 1) / 2
    boxes = torch.cat([pts - half, pts + half], 1)
    # IoU > 0 ⇔ Chebyshev distance < min_distance: peak_local_max's spacing (p_norm = inf)
    keep = batched_nms(boxes, scores, groups, 0.0)
    keep = keep.sort().values  # global maxima were concatenated first → stay first per class
    pts, groups = pts[keep], groups[keep]

    out: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(B)]
    for g in torch.unique(groups).tolist():  # one entry per (image, present class)
        out[g // C].append((g % C, pts[groups == g]))
    return out


def find_peaks_reference(cam: torch.Tensor, labels: torch.Tensor, min_distance: int = 20, threshold: float = 0.5,
                         single_peak: bool = False, valid: torch.Tensor | None = None,
                         exclude_border: bool = True) -> list[list[tuple[int, torch.Tensor]]]:
    """Prompt points per present class by the authors' rule, quirks included (``cam.cpm.peak_rule:
    reference``); same arguments and output as :func:`find_peaks`.

    ``models/model_s2c.py`` ``update()`` per class: the global argmax (first in raster order); then
    ``peak_local_max(maximum_filter(cam, 3, mode="constant"), min_distance)``, whose candidates
    are pixels equal to the (2·min_distance + 1)² maximum of the max-filtered map — a 3×3 plateau
    there, of which the first in raster order (the top-left pixel) survives the spacing — in
    decreasing order; those whose unfiltered CAM is > ``threshold`` are kept, and the first of
    them is dropped
    (``peaks_valid[1:]``: meant to be the global max, even when that lies within ``min_distance``
    of the border, where peak_local_max never returns it). Run with scikit-image's own
    ``peak_local_max`` and scipy's ``maximum_filter``, one (image, class) at a time on the CPU, as
    the reference does. ``valid`` zeroes the CAM outside the image first and keeps the global max
    inside it (the reference's crops have no padding).
    """
    from skimage.feature import peak_local_max  # imported here: only this rule needs scikit-image

    B, C, H, W = cam.shape
    sub = cam.detach().float()
    out: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(B)]
    for b, c in (labels > 0.5).nonzero().tolist():
        a = sub[b, c]
        if valid is not None:
            a = a * valid[b].to(a.dtype)
            g = int(torch.where(valid[b], a, -1.0).flatten().argmax())
        else:
            g = int(a.flatten().argmax())
        rows = [(g // W, g % W)]
        if not single_peak:
            a_np = a.cpu().numpy()
            filt = ndi.maximum_filter(a_np, size=3, mode="constant")
            cand = peak_local_max(filt, min_distance=min_distance, exclude_border=bool(exclude_border))
            cand = cand[a_np[cand[:, 0], cand[:, 1]] > threshold]
            rows += [(int(y), int(x)) for y, x in cand[1:]]
        yx = torch.tensor(rows, dtype=sub.dtype, device=cam.device)
        out[b].append((c, yx.flip(-1) + 0.5))  # (x, y) pixel centres
    return out


def sam_alpha(logits: torch.Tensor, kind: str = "logits", mask_threshold: float = 0.0,
              offset: float = 1.0) -> torch.Tensor:
    """Per-pixel SAM reliability α_sam from mask logits.

    Args:
        logits: (K, H, W) mask logits of the chosen multimask output.
        kind: ``logits`` (reference: the logits themselves), ``sigmoid``, or ``stability`` (SAM's
            stability score of each mask, a constant per mask).
    Returns:
        (K, H, W) float.
    """
    if kind == "logits":
        return logits
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    if kind == "stability":
        s = calculate_stability_score(logits, mask_threshold, offset)  # (K,)
        return s[:, None, None].expand_as(logits).to(logits.dtype)
    raise ValueError(f"cpm.alpha_sam must be one of {ALPHA_SAM}, got {kind!r}")


def cpm_pseudo_label(cam: torch.Tensor, classes: torch.Tensor, logits: torch.Tensor,
                     valid: torch.Tensor | None = None, alpha_sam: str = "logits",
                     confidence: str = "both", background: str = "uncovered", tau: float = 0.5,
                     alpha_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Aggregate the per-class SAM masks of one image into a pseudo-label Ŝ.

    Args:
        cam: (C, H, W) prompting CAM in [0, 1] (crop coords).
        classes: (K,) long, the class of each mask. logits: (K, H, W) SAM mask logits warped
            into the crop (mask = logits > 0; padding should carry negative logits).
        valid: (H, W) bool; pixels outside become 255.
        confidence: which factors form α: ``both`` (α_sam·α_cam), ``sam``, ``cam`` or ``none``
            (indicator; overlaps go to the lower class index).
        background: ``uncovered`` (reference: no class mask covers the pixel) or ``tau``
            (paper eq. 11: also where max_c α^c < tau).
        alpha_logits: (K, H, W) logits to take α_sam from instead of ``logits`` (the masks stay
            ``logits > 0``): ``cam.cpm.confidence_source: lowres``, SAM's low-res logits resized
            straight to the crop, as the reference. They can disagree in sign with ``logits``, so a
            covered pixel can score < 0; such a pixel is background, as the reference's
            ``pgt_score < 0``.
    Returns:
        (H, W) long: 0 background, c+1 class c, 255 ignore.
    """
    if confidence not in CONFIDENCE:
        raise ValueError(f"cpm.confidence must be one of {CONFIDENCE}, got {confidence!r}")
    if background not in BACKGROUND:
        raise ValueError(f"cpm.background must be one of {BACKGROUND}, got {background!r}")
    H, W = cam.shape[-2:]
    out = torch.zeros(H, W, dtype=torch.long, device=cam.device)
    if classes.numel():
        masks = logits > 0  # (K, H, W)
        conf = torch.ones_like(logits, dtype=torch.float32)
        if confidence in ("both", "sam"):
            conf = conf * sam_alpha((logits if alpha_logits is None else alpha_logits).float(), alpha_sam)
        if confidence in ("both", "cam"):
            a = cam[classes].float()
            a_cam = (a * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp_min(1)  # (K,)
            conf = conf * a_cam[:, None, None]
        score = torch.where(masks, conf, torch.full_like(conf, float("-inf")))
        best, arg = score.max(0)
        out = classes[arg] + 1
        bg = ~masks.any(0)
        if alpha_logits is not None:
            bg |= best < 0
        if background == "tau":
            bg |= best < tau
        out = out.masked_fill(bg, 0)
    if valid is not None:
        out = out.masked_fill(~valid, 255)
    return out


def cpm_loss(cam: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None = None,
             mode: str = "ce") -> torch.Tensor:
    """L_CPM between normalised CAMs and the pseudo-label.

    Args:
        cam: (B, C, H, W) normalised CAMs in [0, 1] with gradient (see :func:`normalize_cams`).
        target: (B, H, W) long, 0 background, c+1 class c, 255 ignore.
        labels: (B, C) multi-hot, needed for ``l1``.
        mode: ``ce`` — cross-entropy over [A^0 = 1 − max_c A^c; A] (the values act as logits, like
            the reference); ``l1`` — "no background map" ablation: mean |A^c − 1[Ŝ = c+1]| over
            valid pixels and present classes.
    Returns:
        scalar.
    """
    if mode == "ce":
        bg = 1.0 - cam.max(1, keepdim=True).values
        x = torch.cat([bg, cam], 1)
        if not bool((target != 255).any()):
            return cam.sum() * 0.0
        return F.cross_entropy(x.float(), target, ignore_index=255)
    if mode == "l1":
        if labels is None:
            raise ValueError("cpm_loss(mode='l1') needs labels")
        C = cam.shape[1]
        cls_ids = torch.arange(1, C + 1, device=target.device)[None, :, None, None]
        onehot = (target[:, None] == cls_ids).to(cam.dtype)  # (B, C, H, W)
        w = (target != 255)[:, None].to(cam.dtype) * labels[:, :, None, None].to(cam.dtype)
        denom = w.sum()
        if float(denom) == 0:
            return cam.sum() * 0.0
        return ((cam - onehot).abs() * w).sum() / denom
    raise ValueError(f"cpm.loss must be one of {LOSS_MODES}, got {mode!r}")
