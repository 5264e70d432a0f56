"""Tests for s2c.losses: SSC (vs a per-segment loop), peaks (vs skimage), CPM aggregation and loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.feature import peak_local_max

from s2c.losses import (cls_loss, cpm_loss, cpm_pseudo_label, find_peaks, multiscale_prompt_cams,
                        normalize_cams, reindex_segments, sam_alpha, ssc_loss)


# ------------------------------------------------------------------------------------------ SSC
def _ssc_loop(feats, se, T, unassigned_prototype=False):
    """Straightforward per-image, per-segment implementation of METHOD.md §4."""
    B, D = feats.shape[:2]
    H, W = se.shape[-2:]
    f = F.normalize(F.interpolate(feats, (H, W), mode="bilinear", align_corners=False), dim=1)
    losses = []
    for b in range(B):
        fb = f[b].reshape(D, -1).T  # (HW, D)
        sb = se[b].reshape(-1)
        ids = [i for i in sb.unique().tolist() if i != 0 or unassigned_prototype]
        protos = torch.stack([F.normalize(fb[sb == i].mean(0).detach(), dim=0) for i in ids])
        anchors = sb > 0
        logits = fb[anchors] @ protos.T / T
        tgt = torch.tensor([ids.index(i) for i in sb[anchors].tolist()])
        losses.append(F.cross_entropy(logits, tgt, reduction="none"))
    return torch.cat(losses).mean()


def _random_se(B, H, W, n, seed):
    g = torch.Generator().manual_seed(seed)
    # blocky segments (like SAM masks) with some unassigned (0) blocks
    small = torch.randint(0, n + 1, (B, H // 4, W // 4), generator=g)
    return small.repeat_interleave(4, 1).repeat_interleave(4, 2)


@pytest.mark.parametrize("T,unassigned,fsize,size", [
    (0.5, False, (6, 6), (24, 24)), (1.0, False, (6, 6), (24, 24)), (0.5, True, (6, 6), (24, 24)),
    (0.5, False, (6, 7), (25, 31)),  # non-integer ratios, different per axis
    (1.0, True, (9, 9), (8, 12)),  # features larger than the SE map along y
    (0.5, False, (1, 5), (12, 20)),  # a single feature row
])
def test_ssc_matches_loop_values_and_grads(T, unassigned, fsize, size):
    torch.manual_seed(0)
    feats = torch.randn(2, 8, *fsize, requires_grad=True)
    se = _random_se(2, 28, 32, 5, seed=1)[:, :size[0], :size[1]]
    se[1][se[1] == 3] = 7  # non-contiguous ids
    a = ssc_loss(feats, se, T, unassigned_prototype=unassigned)
    ga, = torch.autograd.grad(a, feats)
    b = _ssc_loop(feats, se, T, unassigned_prototype=unassigned)
    gb, = torch.autograd.grad(b, feats)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert torch.allclose(ga, gb, atol=1e-6)


def test_ssc_separated_features_have_low_loss_and_temperature_matters():
    se = _random_se(1, 16, 16, 4, seed=2)
    se[se == 0] = 1
    onehot = F.one_hot(se, 8).permute(0, 3, 1, 2).float()  # each segment its own direction
    good = ssc_loss(onehot, se, 0.1)
    rand = ssc_loss(torch.randn(1, 8, 16, 16), se, 0.1)
    assert good.item() < 0.01 < rand.item()
    assert ssc_loss(onehot, se, 0.5).item() > good.item()


def test_ssc_unassigned_pixels_are_not_anchors():
    torch.manual_seed(3)
    se = _random_se(1, 16, 16, 3, seed=3)
    assert (se == 0).any() and (se > 0).any()
    f1 = torch.randn(1, 4, 16, 16)
    f2 = f1.clone()
    f2[:, :, se[0] == 0] = torch.randn_like(f2[:, :, se[0] == 0])  # change only unassigned pixels
    assert ssc_loss(f1, se).item() == pytest.approx(ssc_loss(f2, se).item(), rel=1e-6)
    # with the reference's unassigned prototype the negatives change
    assert ssc_loss(f1, se, unassigned_prototype=True).item() != pytest.approx(
        ssc_loss(f2, se, unassigned_prototype=True).item(), rel=1e-6)


def test_ssc_no_anchor_is_zero_with_graph():
    feats = torch.randn(2, 4, 4, 4, requires_grad=True)
    loss = ssc_loss(feats, torch.zeros(2, 8, 8, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(feats.grad == 0)


def test_reindex_segments():
    se = torch.tensor([[0, 5, 5], [9, 0, 2]])
    assert reindex_segments(se).tolist() == [[0, 2, 2], [3, 0, 1]]
    assert reindex_segments(torch.tensor([[4, 8]])).tolist() == [[1, 2]]
    f = torch.randn(1, 3, 2, 3)
    assert ssc_loss(f, se[None]).item() == pytest.approx(ssc_loss(f, reindex_segments(se)[None]).item(), rel=1e-6)


# ------------------------------------------------------------------------------------------ CPM
def _bump(H, W, cy, cx, s, h):
    y, x = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    return h * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s**2))


def test_normalize_cams():
    cams = torch.randn(2, 3, 4, 4) * 5
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    a = normalize_cams(cams, labels, (16, 16))
    assert a.shape == (2, 3, 16, 16) and a.min() >= 0
    assert torch.all(a[0, 1] == 0) and torch.all(a[1, 0] == 0)
    assert a.max() <= 1.0  # normalised at CAM resolution (reference), then upsampled
    same = normalize_cams(cams, labels, (4, 4))
    assert same[0, 0].max() == pytest.approx(1.0, abs=1e-3) and same[1, 1].max() == pytest.approx(1.0, abs=1e-3)


def test_normalize_cams_equals_all_class_version_with_grads():
    """Only present classes are upsampled; values and gradients equal the all-class formula."""
    torch.manual_seed(0)
    cams = torch.randn(4, 20, 8, 8, requires_grad=True)
    labels = (torch.rand(4, 20) < 0.2).float()
    labels[0] = 0  # an image without labels
    a = F.relu(cams)
    a = F.interpolate(a / (F.adaptive_max_pool2d(a, 1) + 1e-5), (64, 48), mode="bilinear", align_corners=False)
    ref = a * labels[:, :, None, None]
    out = normalize_cams(cams, labels, (64, 48))
    w = torch.randn_like(ref)
    g_out, = torch.autograd.grad((out * w).sum(), cams)
    g_ref, = torch.autograd.grad((ref * w).sum(), cams)
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(g_out, g_ref, atol=1e-6)


def test_multiscale_prompt_cams_shape_and_norm():
    conv = torch.nn.Conv2d(3, 2, 1)
    imgs = torch.randn(1, 3, 32, 32)
    out = multiscale_prompt_cams(lambda x: conv(F.avg_pool2d(x, 8)), imgs, torch.tensor([[1.0, 0.0]]))
    assert out.shape == (1, 2, 32, 32) and not out.requires_grad
    assert out[0, 0].max() == pytest.approx(1.0, abs=1e-3) and torch.all(out[0, 1] == 0)
    one = multiscale_prompt_cams(lambda x: conv(F.avg_pool2d(x, 8)), imgs, torch.tensor([[1.0, 0.0]]), scales=(1.0,))
    assert not torch.allclose(one, out)


def test_multiscale_prompt_cams_in_slices_equal_the_whole_batch():
    conv = torch.nn.Conv2d(3, 2, 1)
    imgs, labels = torch.randn(5, 3, 32, 32), torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    calls = []

    def fwd(x):
        calls.append(len(x))
        return conv(F.avg_pool2d(x, 8))

    whole = multiscale_prompt_cams(fwd, imgs, labels, (1.0, 2.0))
    assert calls == [5, 5]
    calls.clear()
    sliced = multiscale_prompt_cams(fwd, imgs, labels, (1.0, 2.0), chunk=2)
    assert calls == [2, 2, 1, 2, 2, 1]
    assert torch.allclose(sliced, whole, atol=1e-6)


def test_find_peaks_global_local_threshold_single():
    H = W = 96
    cam = torch.zeros(1, 2, H, W)
    cam[0, 0] = _bump(H, W, 30, 30, 5, 1.0) + _bump(H, W, 60, 70, 5, 0.8) + _bump(H, W, 70, 30, 5, 0.3)
    cam[0, 1] = _bump(H, W, 50, 50, 5, 1.0)
    peaks = find_peaks(cam, torch.tensor([[1.0, 0.0]]), min_distance=10, threshold=0.5)
    assert len(peaks[0]) == 1
    c, pts = peaks[0][0]
    assert c == 0
    assert pts.tolist() == [[30.5, 30.5], [70.5, 60.5]]  # global max first; the 0.3 bump is below τ
    (_, single), = find_peaks(cam, torch.tensor([[1.0, 0.0]]), 10, 0.5, single_peak=True)[0]
    assert single.tolist() == [[30.5, 30.5]]
    (_, low), = find_peaks(cam, torch.tensor([[1.0, 0.0]]), 10, 0.2)[0]
    assert len(low) == 3
    both = find_peaks(cam, torch.tensor([[1.0, 1.0]]), 10, 0.5)[0]
    assert [c for c, _ in both] == [0, 1] and both[1][1].tolist() == [[50.5, 50.5]]


def test_find_peaks_respects_valid_mask_and_border():
    H = W = 64
    cam = (_bump(H, W, 10, 10, 4, 1.0) + _bump(H, W, 40, 40, 4, 0.9))[None, None]
    valid = torch.ones(1, H, W, dtype=torch.bool)
    valid[:, :20, :20] = False  # the strongest bump lies in crop padding
    (_, pts), = find_peaks(cam, torch.ones(1, 1), 8, 0.5, valid=valid)[0]
    assert pts.tolist() == [[40.5, 40.5]]
    # a local max within min_distance of the border is dropped (peak_local_max default), the global max is not
    cam2 = (_bump(H, W, 3, 32, 3, 1.0) + _bump(H, W, 40, 40, 3, 0.9))[None, None]
    (_, pts2), = find_peaks(cam2, torch.ones(1, 1), 8, 0.5)[0]
    assert pts2.tolist() == [[32.5, 3.5], [40.5, 40.5]]
    cam3 = (_bump(H, W, 3, 32, 3, 0.9) + _bump(H, W, 40, 40, 3, 1.0))[None, None]
    (_, pts3), = find_peaks(cam3, torch.ones(1, 1), 8, 0.5)[0]
    assert pts3.tolist() == [[40.5, 40.5]]
    (_, pts4), = find_peaks(cam3, torch.ones(1, 1), 8, 0.5, exclude_border=False)[0]
    assert pts4.tolist() == [[40.5, 40.5], [32.5, 3.5]]


def test_find_peaks_agrees_with_reference_skimage():
    rng = np.random.default_rng(0)
    for trial in range(4):
        m = ndi.gaussian_filter(rng.random((128, 128)), 6)
        m = (m - m.min()) / (m.max() - m.min())
        (_, ours), = find_peaks(torch.from_numpy(m).float()[None, None], torch.ones(1, 1), 20, 0.5)[0]
        # the reference procedure (METHOD.md §5.2)
        filt = ndi.maximum_filter(m, size=3, mode="constant")
        loc = peak_local_max(filt, min_distance=20)
        loc = loc[m[loc[:, 0], loc[:, 1]] > 0.5]
        g = np.array(np.unravel_index(m.argmax(), m.shape))
        ref = np.concatenate([g[None], loc[np.abs(loc - g).max(1) > 20]])[:, ::-1] + 0.5
        ours = ours.numpy()
        assert np.allclose(ours[0], ref[0])
        d = np.abs(ours[:, None] - ref[None]).max(-1)
        assert len(ours) == len(ref) and (d.min(1) <= 2).all(), (trial, ours, ref)


def test_sam_alpha_kinds():
    logits = torch.randn(2, 8, 8) * 3
    assert torch.equal(sam_alpha(logits, "logits"), logits)
    assert torch.allclose(sam_alpha(logits, "sigmoid"), torch.sigmoid(logits))
    st = sam_alpha(logits, "stability")
    assert st.shape == logits.shape and torch.all(st[0] == st[0, 0, 0]) and 0 <= st.min() <= st.max() <= 1
    with pytest.raises(ValueError):
        sam_alpha(logits, "bogus")


def _two_masks():
    """Masks of classes 2 and 5 on a 4×6 crop overlapping in column 2-3."""
    H, W = 4, 6
    logits = torch.full((2, H, W), -5.0)
    logits[0, :, 0:4] = 2.0   # class 2: strong SAM logits
    logits[1, :, 2:5] = 1.0   # class 5: weaker SAM logits
    cam = torch.zeros(7, H, W)
    cam[2, :, 0:4] = 0.2       # ...but weak CAM
    cam[5, :, 2:5] = 0.9
    return cam, torch.tensor([2, 5]), logits


def test_cpm_pseudo_label_confidence_variants():
    cam, cls, logits = _two_masks()
    both = cpm_pseudo_label(cam, cls, logits)  # α: class2 = 2*0.2=0.4, class5 = 1*0.9
    assert both[0].tolist() == [3, 3, 6, 6, 6, 0]
    sam = cpm_pseudo_label(cam, cls, logits, confidence="sam")
    assert sam[0].tolist() == [3, 3, 3, 3, 6, 0]
    camc = cpm_pseudo_label(cam, cls, logits, confidence="cam")
    assert camc[0].tolist() == [3, 3, 6, 6, 6, 0]
    none = cpm_pseudo_label(cam, cls, logits, confidence="none")
    assert none[0].tolist() == [3, 3, 3, 3, 6, 0]  # ties → first mask
    # α_sam kind matters once SAM logits vary inside a mask
    logits2 = logits.clone()
    logits2[0, :, 2] = 20.0
    assert cpm_pseudo_label(cam, cls, logits2)[0, 2] == 3
    assert cpm_pseudo_label(cam, cls, logits2, alpha_sam="sigmoid")[0, 2] == 6


def test_cpm_pseudo_label_background_and_valid():
    cam, cls, logits = _two_masks()
    tau = cpm_pseudo_label(cam, cls, logits, background="tau", tau=0.5)
    assert tau[0].tolist() == [0, 0, 6, 6, 6, 0]  # class 2 confidence 0.4 < τ
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[3] = False
    v = cpm_pseudo_label(cam, cls, logits, valid=valid)
    assert (v[3] == 255).all() and (v[:3] != 255).all()
    empty = cpm_pseudo_label(cam, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4, 6), valid=valid)
    assert (empty[:3] == 0).all() and (empty[3] == 255).all()


def test_cpm_loss_ce_and_l1():
    C, H, W = 3, 8, 8
    target = torch.zeros(1, H, W, dtype=torch.long)
    target[:, :, 4:] = 2  # right half class 1
    target[:, 0] = 255
    good = torch.zeros(1, C, H, W)
    good[0, 1, :, 4:] = 1.0
    bad = torch.zeros(1, C, H, W)
    bad[0, 1, :, :4] = 1.0
    assert cpm_loss(good, target).item() < cpm_loss(bad, target).item()
    # ignored row does not matter
    bad_row = good.clone()
    bad_row[0, :, 0] = torch.rand(C, W)
    assert cpm_loss(bad_row, target).item() == pytest.approx(cpm_loss(good, target).item())
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    assert cpm_loss(good, target, labels, "l1").item() == pytest.approx(0.0)
    # bad: class-1 plane wrong everywhere on the 7 valid rows
    assert cpm_loss(bad, target, labels, "l1").item() == pytest.approx(1.0)
    x = torch.rand(1, C, H, W, requires_grad=True)
    cpm_loss(x, torch.full((1, H, W), 255)).backward()
    assert torch.all(x.grad == 0)
    with pytest.raises(ValueError):
        cpm_loss(good, target, mode="l2")


def test_cls_loss():
    logits = torch.tensor([[10.0, -10.0]])
    assert cls_loss(logits, torch.tensor([[1.0, 0.0]])).item() < 1e-3
    assert cls_loss(logits, torch.tensor([[0.0, 1.0]])).item() > 5


@pytest.mark.parametrize("radius", [1, 2, 7, 20, 40])
def test_sliding_max_equals_max_pool(radius):
    from s2c.losses.cpm import _sliding_max

    x = torch.randn(3, 37, 50, generator=torch.Generator().manual_seed(radius))
    k = 2 * radius + 1
    ref = F.max_pool2d(F.pad(x[:, None], (radius,) * 4, value=float("-inf")), k, 1)[:, 0]
    assert torch.equal(_sliding_max(_sliding_max(x, radius, -1), radius, -2), ref)
