"""SAM post-processing of pseudo-labels with segment-everything masks (Chen et al. 2023; METHOD.md §7).

A SAM mask S (one segment of the SE map) is assigned to class i when

    |R_i ∩ S| / |S| > fg_ratio   or   |R_i ∩ S| / |R_i| >= region_ratio

with R_i the region of class i in the input label map (foreground classes; background competes
too only with ``include_background``). A mask is claimed by ONE class only: when several classes
qualify, the one with the largest overlap |R_i ∩ S| wins (ties → the lowest label value).

The refined label map is built from the masks: claimed masks take their class, pixels in no mask
(SE id 0) keep their label (so R_i's uncovered pixels keep class i), and pixels of masks no class
claimed become background — the new R_i is the union of its masks plus its uncovered pixels.
``keep_unclaimed`` keeps the input label there instead (a milder variant, not Chen et al.'s).

Vectorised: one bincount over (segment, label) pairs gives every |R_i ∩ S| at once.
"""

from __future__ import annotations

import numpy as np

from ..errors import S2CError

#: The ``pseudo.sam`` sub-section: SAM post-processing of pseudo-labels (not the ``sam`` section,
#: whose keys build the SAM caches).
SAM_POST_DEFAULTS: dict = {
    "fg_ratio": 0.5,
    "region_ratio": 0.85,
    "include_background": False,
    "keep_unclaimed": False,
}

IGNORE = 255


def sam_refine(label: np.ndarray, se_map: np.ndarray, fg_ratio: float = SAM_POST_DEFAULTS["fg_ratio"],
               region_ratio: float = SAM_POST_DEFAULTS["region_ratio"],
               include_background: bool = SAM_POST_DEFAULTS["include_background"],
               keep_unclaimed: bool = SAM_POST_DEFAULTS["keep_unclaimed"]) -> np.ndarray:
    """Refine a label map with the SE masks.

    label: uint8 (H, W), 0 = background, c+1 = class c, 255 = ignore (255 is no region and
    claims nothing; inside a mask its pixels follow the mask). se_map: int (H, W), 0 = no mask,
    1..N = segment ids. include_background: whether background (0) competes for masks like a
    class. keep_unclaimed: pixels of unclaimed masks keep their label instead of becoming
    background. Returns uint8 (H, W).
    """
    label = np.asarray(label)
    se = np.asarray(se_map).astype(np.int64)
    if label.shape != se.shape:
        raise S2CError(f"SE map of shape {se.shape} does not match the label map {label.shape}; "
                       "the SE cache was built for other images — rebuild it")
    if se.size and se.min() < 0:
        raise S2CError("SE map has negative segment ids; rebuild the SE cache")
    n_seg = int(se.max()) + 1 if se.size else 1
    lab = label.astype(np.int64)
    valid = lab != IGNORE
    K = int(lab[valid].max()) + 1 if valid.any() else 1
    # inter[s, i] = |S_s ∩ R_i|; segment sizes count every pixel of the mask, ignored ones included
    inter = np.bincount(se[valid] * K + lab[valid], minlength=n_seg * K).reshape(n_seg, K)
    seg_size = np.bincount(se.ravel(), minlength=n_seg)
    region = np.bincount(lab[valid], minlength=K)
    with np.errstate(divide="ignore", invalid="ignore"):
        by_mask = inter / np.maximum(seg_size, 1)[:, None]
        by_region = inter / np.maximum(region, 1)[None, :]
    ok = (inter > 0) & ((by_mask > fg_ratio) | (by_region >= region_ratio))
    ok[0] = False  # id 0 = pixels in no SAM mask: they keep their label
    if not include_background:
        ok[:, 0] = False
    claimed = ok.any(1)
    winner = np.where(ok, inter, -1).argmax(1)  # largest overlap; argmax → lowest label on ties
    # per segment: its winner, or what unclaimed masks become (background; -1 = keep the label)
    fill = np.where(claimed, winner, -1 if keep_unclaimed else 0)
    fill[0] = -1
    seg_fill = fill[se]
    out = np.where(seg_fill >= 0, seg_fill, lab)
    return out.astype(np.uint8)
