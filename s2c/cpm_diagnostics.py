"""CPM diagnostics during training: is CPM teaching the CAMs something right?

On a fixed sample of training images that have GT masks, after each epoch, in eval mode and
without gradients, with the trainer's own prompting CAM, peaks and SAM decoding:

- ``peak_hit_rate``: fraction of CPM's prompt points that lie on a GT pixel of their own class;
  ``peak_chance``: what random points would score (each peak's class area share of the crop);
- ``pseudo_miou``: mIoU of CPM's pseudo-label Ŝ against the GT (padding ignored);
- ``prompt_cam_miou``: mIoU of the prompting CAM under the background-threshold search.

CPM helps only when Ŝ beats the prompting CAM and peaks hit far above chance. Rows go to
``<out>/cpm_diag.csv`` (+ ``cpm_diag.png``). The sample's crops come from their own augmentation
stream (independent of the training epochs), identical at every epoch.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from .data.cam_train import CAMTrainDataset, collate, to_device
from .data.transforms import Geometry
from .metrics import ThresholdSearch, confusion_matrix, miou_from_confusion
from .objective import cpm_peaks, cpm_targets, prompting_cams

log = logging.getLogger(__name__)

#: Augmentation stream of the diagnostic crops (far from any training epoch index).
DIAG_EPOCH = 10**6
FIELDS = ["epoch", "step", "n_images", "n_peaks", "peak_hit_rate", "peak_chance", "pseudo_miou",
          "prompt_cam_miou"]


def pick_sample(ds, n: int, seed: int = 0) -> list[int]:
    """Indices of up to ``n`` training images with a GT mask, in a seeded order (fixed per run)."""
    order = np.random.default_rng([seed, 7919]).permutation(len(ds.ids))
    out = []
    for i in order:
        if len(out) >= n:
            break
        if ds.load_mask(ds.ids[int(i)]) is not None:
            out.append(int(i))
    return sorted(out)


def peak_hits(peaks: list[tuple[int, torch.Tensor]], gt: np.ndarray) -> tuple[int, int, float]:
    """(hits, peaks, summed chance) of one crop's peaks [(class c, points (K, 2) (x, y))] on GT (h, w)."""
    valid = gt != 255
    n_valid = max(int(valid.sum()), 1)
    hits = n = 0
    chance = 0.0
    for c, pts in peaks:
        share = float((gt == c + 1).sum()) / n_valid
        for x, y in pts.floor().long().cpu().tolist():  # pixel centres (i + 0.5) → index i
            y = min(max(y, 0), gt.shape[0] - 1)
            x = min(max(x, 0), gt.shape[1] - 1)
            hits += int(gt[y, x] == c + 1)
            n += 1
            chance += share
    return hits, n, chance


@torch.no_grad()
def run_diagnostics(net: torch.nn.Module, sam, batch_of: Callable[[], tuple[dict, list[np.ndarray]]],
                    cfg: dict, num_classes: int) -> dict[str, Any]:
    """One diagnostics row (without epoch / step).

    Args:
        net: the classifier (set to eval mode here, restored after).
        sam: the frozen SAM that CPM decodes with.
        batch_of: () → (batch dict on the device, GT label maps warped into each crop, uint8 (h, w)).
        cfg: the resolved ``cam`` section: the trainer's prompting CAM, peaks and SAM decoding.
        num_classes: C (foreground).
    """
    cpm = cfg["cpm"]
    was = net.training
    net.eval()
    try:
        batch, gts = batch_of()
        pc = prompting_cams(net, batch["image"], batch["labels"], cpm)
        target = cpm_targets(sam, batch, pc, cpm, cfg["sam_mode"]).cpu().numpy()
        peaks = cpm_peaks(pc, batch, cpm)
    finally:
        net.train(was)
    K = num_classes + 1
    cm = np.zeros((K, K), np.int64)
    search = ThresholdSearch(K)
    hits = n = 0
    chance = 0.0
    labels = batch["labels"].cpu().numpy()
    pcn = pc.float().cpu().numpy()
    for b, gt in enumerate(gts):
        g = gt.copy()
        g[target[b] == 255] = 255  # crop padding
        pred = np.where(target[b] == 255, 0, target[b])
        cm += confusion_matrix(pred, g, K)
        cls = np.flatnonzero(labels[b] > 0.5)
        search.add(pcn[b, cls], cls, g)
        h, k, ch = peak_hits(peaks[b], g)
        hits, n, chance = hits + h, n + k, chance + ch
    _, cm_cam, _ = search.best()
    pct = lambda v: round(100.0 * v, 4)  # noqa: E731
    return {"n_images": len(gts), "n_peaks": n,
            "peak_hit_rate": pct(hits / n) if n else None, "peak_chance": pct(chance / n) if n else None,
            "pseudo_miou": pct(miou_from_confusion(cm)), "prompt_cam_miou": pct(miou_from_confusion(cm_cam))}


def make_diagnostics(net: torch.nn.Module, sam, data: CAMTrainDataset, ds, cfg: dict, device: torch.device):
    """(a () → row callable, None), or (None, why they are off): disabled, no L_CPM, or no training
    image with a GT mask. ``data`` is the trainer's dataset (its caches are shared), ``ds`` its
    image dataset, ``net`` the unwrapped classifier."""
    dcfg, cpm = cfg["diagnostics"], cfg["cpm"]
    if not cpm["enabled"]:
        return None, f"L_CPM is off (cam.cpm.enabled false; cam.ablation {cfg['ablation']})"
    if not dcfg["enabled"] or int(dcfg["n_images"]) < 1:
        return None, "cam.diagnostics.enabled is false (or n_images is 0)"
    sample = pick_sample(ds, int(dcfg["n_images"]), cfg["seed"])
    if not sample:
        log.info("CPM diagnostics off: no training image of %s has a GT mask", ds.split)
        return None, f"no training image of split {ds.split!r} has a GT mask to score CPM's peaks and labels on"
    view = CAMTrainDataset(ds, cfg["augment"], data.embed, data.se, cfg["seed"], gt_masks=data.gt_masks)
    view.set_epoch(DIAG_EPOCH)
    fixed: list = []  # the sample's crops never change: read images, caches and masks once

    def batch_of():
        if not fixed:
            items = [view[i] for i in sample]
            gts = [Geometry.from_dict(it["geometry"]).warp_to_crop(ds.load_mask(it["id"]), "nearest", fill=255)
                   for it in items]
            fixed.extend((to_device(collate(items), device), gts))
        return fixed[0], fixed[1]

    return (lambda: run_diagnostics(net, sam, batch_of, cfg, ds.num_classes)), None
