"""Refinements: argmax labels, SAM post-processing (Chen et al. 2023) on hand-made cases, denseCRF."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2c.errors import S2CError
from s2c.refine import cams_to_label
from s2c.refine.crf import alpha_for_threshold
from s2c.refine.sam_post import sam_refine


def test_cams_to_label_threshold_and_ties():
    cams = np.array([[[0.9, 0.3, 0.2, 0.5]],
                     [[0.1, 0.6, 0.2, 0.5]]], np.float32)
    out = cams_to_label(cams, np.array([4, 7]), threshold=0.2)
    # argmax class + 1; CAM equal to t → background; a tie between classes → the first class
    np.testing.assert_array_equal(out, [[5, 8, 0, 5]])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(cams_to_label(np.zeros((0, 2, 3)), np.array([], int), 0.3), np.zeros((2, 3)))


def _hand_made():
    """A 49-pixel scene (as 7×7) with four SAM masks and uncovered pixels; see the asserts."""
    seg, lab = [], []

    def add(seg_id, labels):
        seg.extend([seg_id] * len(labels))
        lab.extend(labels)

    add(1, [1] * 6 + [0] * 4)           # A: |R1∩A|/|A| = 0.6 > 0.5 (R1 = 8 → 0.75 < 0.85): mask criterion
    add(2, [2] * 5 + [0] * 5)           # B: R2 entirely inside (ratio 1 ≥ 0.85); bg 5/10 is not > 0.5
    add(3, [0] * 7 + [3] * 3)           # C: bg (0.7 of C) and class 3 (all of R3) both qualify
    add(4, [0] * 4 + [4] * 3 + [5] * 3)  # D: nobody qualifies (R4 = R5 = 5 → 0.6)
    add(0, [1, 1, 4, 4, 5, 5, 0, 0, 0])  # uncovered
    return np.array(lab, np.uint8).reshape(7, 7), np.array(seg, np.int32).reshape(7, 7)


def test_sam_refine_hand_made_case():
    label, se = _hand_made()
    lab, seg = label.ravel(), se.ravel()
    out = sam_refine(label, se).ravel()
    assert (out[seg == 1] == 1).all()                # A claimed by class 1 (mask criterion)
    assert (out[seg == 2] == 2).all()                # B claimed by class 2 (region criterion)
    assert (out[seg == 3] == 3).all()                # C: class 3 (all of R3); background does not compete
    assert (out[seg == 4] == 0).all()                # D claimed by nobody → background
    np.testing.assert_array_equal(out[seg == 0], lab[seg == 0])  # uncovered pixels keep their class

    # background competing: both bg (0.7 of C) and class 3 qualify; one class only, the larger overlap
    out_bg = sam_refine(label, se, include_background=True).ravel()
    assert (out_bg[seg == 3] == 0).all()
    assert (out_bg[seg == 1] == 1).all() and (out_bg[seg == 2] == 2).all()

    out_keep = sam_refine(label, se, keep_unclaimed=True).ravel()
    np.testing.assert_array_equal(out_keep[seg == 4], lab[seg == 4])  # D unchanged
    np.testing.assert_array_equal(out_keep[seg != 4], out[seg != 4])


def test_sam_refine_thresholds_are_strict_and_inclusive():
    # 20-pixel mask, 17 of class 1 whose region has 20 pixels: 17/20 = 0.85 → region criterion holds
    label = np.array([1] * 17 + [0] * 3 + [1] * 3 + [0] * 7, np.uint8)[None]
    se = np.array([1] * 20 + [0] * 10, np.int32)[None]
    out = sam_refine(label, se, fg_ratio=0.9)
    assert (out[0, :20] == 1).all()
    np.testing.assert_array_equal(out[0, 20:], label[0, 20:])
    # region_ratio just above and 17/20 = 0.85 not > 0.9: unclaimed → the mask becomes background
    out = sam_refine(label, se, fg_ratio=0.9, region_ratio=0.86)
    assert (out[0, :20] == 0).all()
    np.testing.assert_array_equal(out[0, 20:], label[0, 20:])
    # and exactly 0.5 of the mask is not > 0.5
    half = np.array([[1, 1, 0, 0, 1, 1, 1, 1]], np.uint8)
    assert (sam_refine(half, np.array([[1, 1, 1, 1, 0, 0, 0, 0]]))[0, :4] == 0).all()


def _reference(label, se, fg_ratio=0.5, region_ratio=0.85, include_background=False, keep_unclaimed=False):
    """Loop version of the rule, for comparison."""
    out = label.copy()
    for s in np.unique(se):
        if s == 0:
            continue
        m = se == s
        best, best_n = None, -1
        for c in np.unique(label):
            if c == 255 or (c == 0 and not include_background):
                continue
            n = int((m & (label == c)).sum())
            if n and (n / m.sum() > fg_ratio or n / (label == c).sum() >= region_ratio) and n > best_n:
                best, best_n = c, n
        if best is not None:
            out[m] = best
        elif not keep_unclaimed:
            out[m] = 0
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(2, 5), st.booleans(), st.booleans())
def test_sam_refine_matches_loop(seed, n_seg, n_cls, with_bg, keep):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, n_cls, (9, 11)).astype(np.uint8)
    label[rng.random(label.shape) < 0.05] = 255
    # blocky segments so that some masks are dominated by one class
    se = rng.integers(0, n_seg + 1, (3, 4)).repeat(3, 0).repeat(3, 1)[:9, :11].astype(np.int32)
    np.testing.assert_array_equal(sam_refine(label, se, include_background=with_bg, keep_unclaimed=keep),
                                  _reference(label, se, include_background=with_bg, keep_unclaimed=keep))


def test_sam_refine_shape_mismatch():
    with pytest.raises(S2CError, match="SE map"):
        sam_refine(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.int32))


def test_alpha_for_threshold():
    a = alpha_for_threshold(0.3)
    assert (1 - 0.3) ** a == pytest.approx(0.3)
    with pytest.raises(S2CError, match="alpha"):
        alpha_for_threshold(0.0)


def test_crf_snaps_to_colour_edge():
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed")
    from s2c.refine.crf import crf_label

    H, W = 24, 48
    rng = np.random.default_rng(0)
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :24] = (200, 30, 30)
    img[:, 24:] = (30, 30, 200)
    img = (img + rng.integers(0, 20, img.shape)).astype(np.uint8)
    # CAM spills over the colour edge at x = 24 up to x = 30
    cam = np.zeros((1, H, W), np.float32)
    cam[0, :, :18] = 1.0
    cam[0, :, 18:30] = 0.45
    cam[0, :, 30:] = 0.05
    t = 0.3
    plain = cams_to_label(cam, np.array([2]), t)
    assert (plain[:, :30] == 3).all()
    out = crf_label(img, cam, np.array([2]), alpha_for_threshold(t))
    assert out.dtype == np.uint8 and out.shape == (H, W)
    assert (out[:, :24] == 3).mean() > 0.95 and (out[:, 24:] == 0).mean() > 0.95


def test_dense_crf_marginals():
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed")
    from s2c.refine.crf import dense_crf

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    img.setflags(write=False)  # as decoded images often are
    probs = rng.random((3, 10, 12)).astype(np.float32)
    q = dense_crf(img, probs / probs.sum(0), iters=2)
    assert q.shape == (3, 10, 12) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    with pytest.raises(S2CError, match="do not match"):
        dense_crf(img, probs[:, :5])


def test_crf_without_bindings_raises_install_hint(monkeypatch):
    import sys

    from s2c.refine.crf import crf_label

    # a None entry makes `import pydensecrf...` raise ImportError, as on a machine without it
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(S2CError, match="pip install pydensecrf2"):
        crf_label(np.zeros((4, 4, 3), np.uint8), np.ones((1, 4, 4), np.float32), np.array([0]), 2.0)
