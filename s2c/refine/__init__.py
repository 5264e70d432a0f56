"""CAM → pseudo-label refinements (METHOD.md §7).

- :func:`cams_to_label`: plain argmax over [background constant t; CAMs] (refinement ``none``).
- :mod:`s2c.refine.crf`: denseCRF on [(1 − max)^α; CAMs] (refinement ``crf``; needs
  ``pydensecrf2``).
- :mod:`s2c.refine.sam_post`: Chen et al. 2023 SAM post-processing of a label map with the
  segment-everything (SE) map (refinement ``sam``).
"""

from __future__ import annotations

import numpy as np


def cams_to_label(cams: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    """Label map from max-normalised CAMs.

    cams: float (K, H, W); classes: int (K,) foreground indices 0..C-1; threshold: background
    constant t. Returns uint8 (H, W): 0 where max CAM <= t (ties → background, as in eval_cam),
    else classes[argmax] + 1.
    """
    cams = np.asarray(cams, dtype=np.float32)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if classes.size == 0:
        return np.zeros(cams.shape[1:], np.uint8)
    # the constant goes first so argmax ties resolve to background, exactly as in ThresholdSearch
    stack = np.concatenate([np.full((1, *cams.shape[1:]), np.float32(threshold)), cams])
    lut = np.concatenate([[0], classes + 1]).astype(np.uint8)
    return lut[stack.argmax(0)]


__all__ = ["cams_to_label"]
