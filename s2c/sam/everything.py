"""Segment-everything (SE) maps: SAM's automatic mask generation merged into one label map per image.

Two generators with the same settings (defaults = SAM's ``SamAutomaticMaskGenerator``: 32 points
per side, pred_iou_thresh 0.88, stability_score_thresh 0.95, box_nms_thresh 0.7, no crops):

- ``impl: stock`` runs ``segment_anything.SamAutomaticMaskGenerator`` itself.
- ``impl: fast`` (default) produces the same masks with less work:

  1. all filtering that does not need full resolution happens on the decoder's 256² low-res
     logits: the predicted-IoU filter is exact there, and the stability score is computed on the
     low-res logits (cropped to the un-padded input) to reject masks that are clearly unstable;
     only masks within ``stability_margin`` of the threshold or above it are upsampled exactly as
     SAM does (``sam.postprocess_masks``) and re-scored at full resolution, so the kept set, boxes
     and NMS match the stock generator's;
  2. optionally (``skip_covered``, off by default because it changes the output) the grid is
     decoded coarse to fine (every 4th point, then every 2nd, then the rest); a later point is not
     decoded when it lies inside the *finest* output of an earlier point and that output was
     accepted — its own masks would be near-duplicates that NMS removes anyway. Points in coarse
     masks whose finer parts were not accepted are still decoded, but some sub-part
     masks found only from skipped points are lost, so the maps are not the stock generator's
     (not for the paper's SE maps; speed and agreement: ``bench/sam_cache.py``);
  3. prompts go through the decoder in batches of ``fast_points_per_batch`` (null = by device:
     large on a GPU, which keeps it busy; small on a CPU, where the decoder is memory-bound and
     small batches stay in cache);
  4. ``shared_decoder``: :func:`s2c.sam.decoder.predict_masks` runs SAM's mask decoder without
     copying the image embedding once per prompt (bit-identical outputs, less decoder time).

  The loop is SAM's generator's shape: :func:`fast_masks` walks the grid levels and batches;
  per batch :func:`_decode_batch` → :func:`_filter_batch` (→ :func:`_coverage` for
  ``skip_covered``); :func:`_nms_output` does the final NMS.

Where the time goes: on a GPU the stock generator spends most of its time upsampling every mask to
full resolution and round-tripping it through RLE, which (1) avoids; on a CPU the mask decoder
itself dominates and only decoding fewer prompts (2) helps much. The measurements:
``bench/sam_cache.py`` and docs/RESULTS.md.

Merging (``overlap``): ``smallest_area`` (paper) — a pixel takes the smallest mask containing it;
``predicted_iou`` (reference code) — the mask with the highest predicted IoU wins. Ids are then
renumbered 1..N over the masks that own at least one pixel; 0 = unassigned.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    build_point_grid,
    calculate_stability_score,
    mask_to_rle_pytorch,
    rle_to_mask,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops import batched_nms

from ..defaults import OVERLAP_RULES, resolve_everything_cfg
from ..errors import S2CError
from .decoder import predict_masks
from .prompt import encode_image, sam_input_size


# ---------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------


def merge_masks(
    masks: np.ndarray | torch.Tensor, areas: np.ndarray, iou_preds: np.ndarray, rule: str = "smallest_area"
) -> np.ndarray:
    """Merge K binary masks (K, H, W) into one label map uint32 (H, W).

    ``smallest_area``: a pixel takes the smallest mask containing it (ties: the earlier mask);
    ``predicted_iou``: the highest predicted IoU wins (ties: the earlier mask). Ids are
    renumbered 1..N in painting order over masks that own at least one pixel; 0 = unassigned.
    """
    masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {masks.shape}")
    k = masks.shape[0]
    out = np.zeros(masks.shape[1:], np.uint32)
    if k == 0:
        return out
    if rule == "smallest_area":
        key = -np.asarray(areas, np.float64)  # paint big first, smallest last (= on top)
    elif rule == "predicted_iou":
        key = np.asarray(iou_preds, np.float64)  # paint low first, highest last
    else:
        raise S2CError(f"unknown SE overlap rule {rule!r}; use one of {OVERLAP_RULES}")
    # Stable sort on (key, -index) reversed: among equal keys the earlier mask is painted last.
    order = np.lexsort((-np.arange(k), key))
    for rank, m in enumerate(order, start=1):
        out[masks[m].astype(bool)] = rank
    present = np.unique(out)
    lut = np.zeros(k + 1, np.uint32)
    present = present[present > 0]
    lut[present] = np.arange(1, len(present) + 1, dtype=np.uint32)
    return lut[out]


def compact_dtype(label_map: np.ndarray) -> np.ndarray:
    """uint16 when ids fit, else uint32 (ids never wrap)."""
    return label_map.astype(np.uint16 if label_map.max(initial=0) < np.iinfo(np.uint16).max else np.uint32)


# ---------------------------------------------------------------------------------------------
# generators
# ---------------------------------------------------------------------------------------------


def _check_supported(sam) -> None:
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        if not hasattr(sam, part):
            raise TypeError(f"segment everything needs a segment_anything Sam-like model (missing .{part})")


@torch.no_grad()
def stock_masks(sam, image: np.ndarray, cfg: dict) -> dict:
    """Run ``SamAutomaticMaskGenerator``; returns ``{masks bool (K,H,W), areas (K,), iou_preds (K,)}``."""
    cfg = resolve_everything_cfg(cfg)
    gen = SamAutomaticMaskGenerator(
        sam,
        points_per_side=cfg["points_per_side"],
        points_per_batch=cfg["points_per_batch"],
        pred_iou_thresh=cfg["pred_iou_thresh"],
        stability_score_thresh=cfg["stability_score_thresh"],
        stability_score_offset=cfg["stability_score_offset"],
        box_nms_thresh=cfg["box_nms_thresh"],
        min_mask_region_area=cfg["min_mask_region_area"],
    )
    anns = gen.generate(image)
    h, w = image.shape[:2]
    masks = np.stack([a["segmentation"] for a in anns]) if anns else np.zeros((0, h, w), bool)
    return {
        "masks": masks,
        "areas": np.array([a["area"] for a in anns], np.int64),
        "iou_preds": np.array([a["predicted_iou"] for a in anns], np.float32),
        "n_decoded": cfg["points_per_side"] ** 2,
    }


def _grid_levels(pps: int, skip_covered: bool) -> list[np.ndarray]:
    """Indices into SAM's row-major pps² grid, coarse to fine (every 4th, every 2nd, rest)."""
    idx = np.arange(pps * pps).reshape(pps, pps)
    if not skip_covered:
        return [idx.ravel()]
    levels, taken = [], np.zeros((pps, pps), bool)
    for step in (4, 2, 1):
        sel = np.zeros((pps, pps), bool)
        sel[::step, ::step] = True
        sel &= ~taken
        taken |= sel
        if sel.any():
            levels.append(idx[sel])
    return levels


def _point_grid(pps: int, orig: tuple[int, int], input_size: tuple[int, int], img_size: int, lr: int, dev):
    """SAM's pps² prompt grid of one image.

    Returns coords (pps², 2) float in SAM's 1024 frame (the transform ``SamPredictor`` applies),
    the low-res (lr²) cell (x, y) of each point (pps², 2) long, and the low-res extent (lh, lw)
    of the image (the rest is padding).
    """
    grid = build_point_grid(pps) * np.array(orig[::-1])[None]  # (pps², 2) (x, y), original pixels
    coords = ResizeLongestSide(img_size).apply_coords(grid, orig)
    cell = torch.as_tensor(np.clip((coords * lr / img_size).astype(np.int64), 0, lr - 1), device=dev)
    lh, lw = -(-input_size[0] * lr // img_size), -(-input_size[1] * lr // img_size)
    return torch.as_tensor(coords, dtype=torch.float32, device=dev), cell, (lh, lw)


def _decode_batch(sam, emb: torch.Tensor, pe: torch.Tensor, pts: torch.Tensor, shared: bool):
    """Single-point prompts pts (B, 1, 2) on emb (1, 256, 64, 64) → low-res logits (B, 3, 256, 256),
    predicted IoU (B, 3): SAM's decoder without copying the embedding per prompt when ``shared``."""
    labels = torch.ones(pts.shape[:2], dtype=torch.int, device=pts.device)
    sparse, dense = sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
    if shared:
        return predict_masks(sam.mask_decoder, emb, pe, sparse, dense, sam_upscaling=True)
    return sam.mask_decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                            dense_prompt_embeddings=dense, multimask_output=True)


def _filter_batch(sam, low: torch.Tensor, iou: torch.Tensor, input_size, orig, cfg: dict, lowres_hw):
    """The stock generator's IoU and stability filters on one batch of masks.

    low (K, 256, 256), iou (K,) → None, or the kept masks: (indices into K, full-resolution bool
    masks (k, H, W), their IoU and stability score). The IoU filter is exact at low resolution; the
    stability score is estimated there first (cropped to the image, with ``stability_margin``
    slack), and only candidates are upsampled and re-scored exactly as SAM does. Thresholds <= 0
    disable a filter, as in the stock generator.
    """
    thr, off = sam.mask_threshold, cfg["stability_score_offset"]
    st_thr, iou_thr = cfg["stability_score_thresh"], cfg["pred_iou_thresh"]
    lh, lw = lowres_hw
    sel = iou > iou_thr if iou_thr > 0 else torch.ones_like(iou, dtype=torch.bool)
    if st_thr > 0:
        sel &= calculate_stability_score(low[:, :lh, :lw], thr, off) >= st_thr - cfg["stability_margin"]
    cand = torch.nonzero(sel).flatten()
    if len(cand) == 0:
        return None
    full = sam.postprocess_masks(low[cand][:, None], input_size, orig)[:, 0]  # (k, H, W)
    st = calculate_stability_score(full, thr, off)
    ok = st >= st_thr if st_thr > 0 else torch.ones_like(st, dtype=torch.bool)
    if not ok.any():
        return None
    return cand[ok], full[ok] > thr, iou[cand[ok]], st[ok]


def _coverage(low: torch.Tensor, accepted: torch.Tensor, b: int, thr: float, lowres_hw) -> torch.Tensor | None:
    """Low-res pixels covered by the batch's accepted finest masks (``skip_covered``).

    A point's finest output is the smallest of its 3 low-res masks; it counts only when it was
    accepted, and is shrunk by one low-res pixel so that boundary points are still decoded.
    low (3b, 256, 256) flattened per point × output, accepted (k,) indices into it → (256, 256)
    bool, or None.
    """
    lh, lw = lowres_hw
    fine = (low[:, :lh, :lw] > thr).flatten(1).sum(1).view(b, 3).argmin(1)  # (b,)
    fine_idx = torch.arange(b, device=low.device) * 3 + fine
    acc = fine_idx[torch.isin(fine_idx, accepted)]
    if not len(acc):
        return None
    m = (low[acc] > thr).float()[:, None]
    return (-torch.nn.functional.max_pool2d(-m, 3, stride=1, padding=1))[:, 0].gt(0.5).any(0)


@torch.no_grad()
def fast_masks(sam, image: np.ndarray, cfg: dict, embedding: torch.Tensor | None = None) -> dict:
    """The fast generator (module docstring). image: uint8 (H, W, 3); embedding: optional (256,64,64).

    Returns ``{masks bool (K,H,W) torch, areas (K,), iou_preds (K,), n_decoded}`` in NMS order.
    """
    cfg = resolve_everything_cfg(cfg)
    _check_supported(sam)
    dev = sam.device
    orig = tuple(image.shape[:2])
    img_size = sam.image_encoder.img_size
    if embedding is None:
        embedding, input_size = encode_image(sam, image)
    else:
        input_size = sam_input_size(orig, img_size)
    emb = embedding.to(dev, torch.float32)[None]
    pe = sam.prompt_encoder.get_dense_pe()
    lr = emb.shape[-1] * 4
    coords, cell, lowres_hw = _point_grid(int(cfg["points_per_side"]), orig, input_size, img_size, lr, dev)
    # the copy-free path needs SAM's own MaskDecoder internals (stand-ins use their forward)
    shared = cfg["shared_decoder"] and hasattr(sam.mask_decoder, "transformer")
    prompt_batch = cfg["fast_points_per_batch"] or (256 if dev.type == "cuda" else 4)

    covered = torch.zeros(lr, lr, dtype=torch.bool, device=dev)
    kept: list[tuple] = []  # (masks, iou, stability) per decoded batch
    n_decoded = 0
    levels = _grid_levels(int(cfg["points_per_side"]), cfg["skip_covered"])
    for li, level in enumerate(levels):
        level = torch.as_tensor(level, device=dev)
        if li > 0:
            level = level[~covered[cell[level, 1], cell[level, 0]]]
        level_cover = []
        for start in range(0, len(level), prompt_batch):
            ids = level[start : start + prompt_batch]
            n_decoded += len(ids)
            low, iou = _decode_batch(sam, emb, pe, coords[ids][:, None, :], shared)  # (b, 3, ...)
            low, iou = low.flatten(0, 1), iou.flatten(0, 1)
            out = _filter_batch(sam, low, iou, input_size, orig, cfg, lowres_hw)
            if out is None:
                continue
            kept.append(out[1:])
            if li + 1 < len(levels) and (c := _coverage(low, out[0], len(ids), sam.mask_threshold, lowres_hw)) is not None:
                level_cover.append(c)
        if level_cover:
            covered |= torch.stack(level_cover).any(0)
    return _nms_output(kept, orig, cfg, n_decoded)


def _nms_output(kept: list[tuple], orig: tuple[int, int], cfg: dict, n_decoded: int) -> dict:
    """Box NMS over all kept masks (and the small-region post-processing) → fast_masks' dict."""
    if not kept:
        h, w = orig
        return {"masks": torch.zeros(0, h, w, dtype=torch.bool), "areas": np.zeros(0, np.int64),
                "iou_preds": np.zeros(0, np.float32), "n_decoded": n_decoded}
    masks = torch.cat([k[0] for k in kept])
    iou = torch.cat([k[1] for k in kept]).float()
    boxes = batched_mask_to_box(masks).float()
    keep = batched_nms(boxes, iou, torch.zeros_like(iou), iou_threshold=cfg["box_nms_thresh"])
    masks, iou, boxes = masks[keep], iou[keep], boxes[keep]
    if cfg["min_mask_region_area"] > 0:
        masks, iou = _remove_small_regions(masks, iou, boxes, cfg)
    return {
        "masks": masks.cpu(),
        "areas": masks.flatten(1).sum(1).cpu().numpy().astype(np.int64),
        "iou_preds": iou.cpu().numpy(),
        "n_decoded": n_decoded,
    }


def _remove_small_regions(masks: torch.Tensor, iou: torch.Tensor, boxes: torch.Tensor, cfg: dict):
    """The stock generator's min_mask_region_area post-processing, on our masks."""
    data = MaskData(rles=mask_to_rle_pytorch(masks.cpu()), boxes=boxes.cpu(), iou_preds=iou.cpu())
    data = SamAutomaticMaskGenerator.postprocess_small_regions(
        data, cfg["min_mask_region_area"], cfg["box_nms_thresh"]
    )
    m = torch.as_tensor(np.stack([rle_to_mask(r) for r in data["rles"]])) if len(data["rles"]) else masks[:0].cpu()
    return m, torch.as_tensor(data["iou_preds"])


def se_masks(sam, image: np.ndarray, cfg: dict | None = None, embedding: torch.Tensor | None = None) -> dict:
    """Masks of the configured generator (``impl``) for one uint8 (H, W, 3) image."""
    cfg = resolve_everything_cfg(cfg)
    if cfg["impl"] == "stock":
        return stock_masks(sam, image, cfg)
    return fast_masks(sam, image, cfg, embedding)


def se_map(sam, image: np.ndarray, cfg: dict | None = None, embedding: torch.Tensor | None = None) -> np.ndarray:
    """SE label map of one uint8 (H, W, 3) image: uint16/uint32 (H, W), 0 = unassigned, 1..N."""
    cfg = resolve_everything_cfg(cfg)
    out = se_masks(sam, image, cfg, embedding)
    return compact_dtype(merge_masks(out["masks"], out["areas"], out["iou_preds"], cfg["overlap"]))


def se_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Agreement of two SE label maps (H, W): pixel mIoU after matching segments.

    Segments of ``b`` are matched one-to-one to segments of ``a`` by Hungarian matching on their IoU
    (scipy ``linear_sum_assignment``); unassigned (0) counts as one more segment. The mean is over
    the union of labels of both maps after matching; an unmatched segment counts as IoU 0.
    """
    from scipy.optimize import linear_sum_assignment  # a heavy import, and only this check needs it

    a = np.asarray(a, np.int64).ravel()
    b = np.asarray(b, np.int64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"SE maps differ in size: {a.shape} vs {b.shape}")
    a = np.unique(a, return_inverse=True)[1]
    b = np.unique(b, return_inverse=True)[1]
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    inter = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).astype(np.float64)
    union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows, cols]
    n_labels = na + nb - len(rows)
    return float(matched.sum() / n_labels)
