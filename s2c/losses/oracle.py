"""Oracle CPM prompts: one interior point per GT instance of each labelled class.

A diagnostic, never a default (it reads the GT masks that weak supervision does not have). With
everything else of CPM unchanged, it separates "the CAM peaks miss their objects" from "the CPM
loss does not transfer SAM's masks": if oracle-prompted CPM does not beat the baseline either, the
prompts are not the bottleneck.

An "instance" is a connected component of the class in the crop's GT mask (VOC's class masks and
COCO's rasterised annotations both give this without an instance file); its point is the pixel
farthest from the component's border, so it lies inside even a thin or concave object.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

#: Components per class that get a point: the largest ones, as many as the reference's peaks
#: typically give a class on a 256-px crop.
MAX_POINTS = 5


def gt_instance_points(gt: np.ndarray, classes: list[int], max_points: int = MAX_POINTS,
                       min_area: int = 1) -> list[tuple[int, np.ndarray]]:
    """Prompt points from a crop's GT mask.

    Args:
        gt: (h, w) integer mask, 0 background, ``c + 1`` class ``c``, 255 ignore / padding.
        classes: the image's labelled classes (0-based); a class absent from the crop gets none.
        max_points: the largest components of each class that get a point.
        min_area: components smaller than this (in pixels) get none.

    Returns:
        [(class c, points (K, 2) float32 (x, y) pixel centres)], classes with K ≥ 1 only, in
        the order of ``classes`` — the layout of :func:`s2c.losses.find_peaks`' per-image entries.
    """
    out = []
    for c in classes:
        comp, n = ndi.label(gt == c + 1)
        if n == 0:
            continue
        areas = ndi.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
        order = [int(i) + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area][:max_points]
        pts = []
        for k in order:
            inside = comp == k
            # distance to the nearest pixel outside the component (a 1-px frame keeps crop edges
            # from counting as interior)
            dist = ndi.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            pts.append((x + 0.5, y + 0.5))
        if pts:
            out.append((c, np.asarray(pts, dtype=np.float32)))
    return out


def oracle_prompts(gt: torch.Tensor, labels: torch.Tensor,
                   max_points: int = MAX_POINTS) -> list[list[tuple[int, torch.Tensor]]]:
    """:func:`gt_instance_points` for a batch: ``gt`` (B, h, w), ``labels`` (B, C) multi-hot →
    per image [(class c, points (K, 2) (x, y))] on ``labels``' device, like find_peaks."""
    out = []
    for b in range(gt.shape[0]):
        classes = (labels[b] > 0.5).nonzero(as_tuple=True)[0].tolist()
        pts = gt_instance_points(gt[b].cpu().numpy(), classes, max_points)
        out.append([(c, torch.from_numpy(p).to(labels.device)) for c, p in pts])
    return out
