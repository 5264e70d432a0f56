"""denseCRF refinement of CAMs (METHOD.md §7), as in the PSA/IRN reference ``crf_inference``.

Scores are [(1 − max_c A^c)^α; A^1..A^K] (background first), turned into unaries by
``-log(p)``, then a fully connected CRF with a Gaussian and a bilateral kernel runs a few
mean-field iterations (kernel settings and iterations: :data:`CRF_DEFAULTS`, the reference's).

:func:`dense_crf` (scores → marginals) is the generic entry, also used by eval_seg;
:func:`crf_label` builds the CAM scores and returns a label map.

Uses ``pydensecrf2`` (PyPI; the maintained fork of Krähenbühl's pydensecrf, importable as
``pydensecrf``). It is imported lazily so the rest of s2c works without it.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import S2CError

#: keys of the pseudo_labels ``crf`` sub-section; alpha None → derived from the threshold.
#: Whole numbers are written as ints: the workflow passes the section to the rules as JSON, and a
#: float would change the text of their params (and so rerun finished jobs).
CRF_DEFAULTS: dict = {
    "alpha": None,
    "iters": 10,
    "gauss_sxy": 3,
    "gauss_compat": 3,
    "bilateral_sxy": 80,
    "bilateral_srgb": 13,
    "bilateral_compat": 10,
}


def require_densecrf():
    """The (densecrf module, unary_from_softmax); S2CError with the install hint when missing."""
    try:  # optional (the crf extra): only refine 'crf' / eval_seg crf need it
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise S2CError("refinement 'crf' needs the denseCRF bindings: pip install pydensecrf2 "
                       "(or choose pseudo_labels.refine: none | sam)") from None
    return dcrf, unary_from_softmax


def alpha_for_threshold(threshold: float) -> float:
    """α with (1 − t)^α = t: the CRF's unary background/foreground crossover then sits at the
    CAM threshold t chosen by eval_cam (our default when ``alpha`` is not set)."""
    if not 0.0 < threshold < 1.0:
        raise S2CError(f"crf: cannot derive alpha from threshold {threshold}; set pseudo_labels.crf.alpha")
    return math.log(threshold) / math.log(1.0 - threshold)


def dense_crf(image: np.ndarray, probs: np.ndarray, iters: int = CRF_DEFAULTS["iters"],
              gauss_sxy: float = CRF_DEFAULTS["gauss_sxy"], gauss_compat: float = CRF_DEFAULTS["gauss_compat"],
              bilateral_sxy: float = CRF_DEFAULTS["bilateral_sxy"],
              bilateral_srgb: float = CRF_DEFAULTS["bilateral_srgb"],
              bilateral_compat: float = CRF_DEFAULTS["bilateral_compat"]) -> np.ndarray:
    """Mean-field denseCRF over class scores.

    image: uint8 (H, W, 3) RGB. probs: float (K, H, W) non-negative scores (need not sum to 1;
    unaries are −log(clip(p, 1e-5))). Returns float32 (K, H, W), the CRF marginals.
    Also used by eval_seg for test-time refinement of segmentation probabilities.
    """
    H, W = image.shape[:2]
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[1:] != (H, W):
        raise S2CError(f"crf: scores {probs.shape} do not match the image {image.shape}")
    dcrf, unary_from_softmax = require_densecrf()
    n = probs.shape[0]
    d = dcrf.DenseCRF2D(W, H, n)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    # a copy: the binding needs a writable C-contiguous buffer (decoded images may be read-only)
    rgb = np.array(image, dtype=np.uint8, order="C")
    d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb, compat=bilateral_compat)
    return np.asarray(d.inference(int(iters)), dtype=np.float32).reshape(n, H, W)


def crf_label(image: np.ndarray, cams: np.ndarray, classes: np.ndarray, alpha: float, **crf_kw) -> np.ndarray:
    """CRF-refined label map from CAMs.

    image: uint8 (H, W, 3) RGB. cams: float (K, H, W) max-normalised CAMs of the labelled
    classes; classes: int (K,) their foreground indices; alpha: background exponent;
    crf_kw: :func:`dense_crf` settings. Returns uint8 (H, W), 0 = background,
    classes[k] + 1 = class k.
    """
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    H, W = image.shape[:2]
    if classes.size == 0:
        return np.zeros((H, W), np.uint8)
    if cams.shape != (classes.size, H, W):
        raise S2CError(f"crf: CAMs {cams.shape} do not match the image {image.shape}; re-run infer_cam")
    cams = np.clip(np.asarray(cams, dtype=np.float32), 0.0, 1.0)
    bg = np.power(1.0 - cams.max(0, keepdims=True), alpha)
    q = dense_crf(image, np.concatenate([bg, cams]), **crf_kw)
    lut = np.concatenate([[0], classes + 1]).astype(np.uint8)
    return lut[q.argmax(0)]
