"""The four opt-in switches to the authors' behaviour (sangrockEG/S2C@102e14c ``update()``) where s2c
departs on purpose: ``cam.ssc.absent_prototypes``, ``cam.cpm.sam_resize``, ``cam.cpm.peak_rule``,
``cam.cpm.confidence_source``. Each changes what it should, the defaults stay s2c's, and with all
four on s2c's online CPM targets equal a literal re-statement of ``update()`` on a tiny SAM (the
real reference checkout: tests/test_reference_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _sam_fixtures import tiny_sam  # noqa: F401  (session fixture)
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from torchvision.transforms import Normalize

from s2c import objective
from s2c.stages import train_cam as tc
from s2c.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize_255, normalize
from s2c.errors import S2CError
from s2c.losses import cpm_pseudo_label, find_peaks, find_peaks_reference, ssc_loss
from s2c.sam import prompt as sp
from s2c.sections import resolve_cam

SWITCHED = {"sam_mode": "online", "ssc": {"absent_prototypes": True},
            "cpm": {"sam_resize": "reference", "peak_rule": "reference", "confidence_source": "lowres"}}


def _bump(H, W, y, x, s, h):
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    return h * torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s * s))


def _image(h, w, seed=0) -> np.ndarray:
    """Smooth random colour blobs, uint8 RGB."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


# ------------------------------------------------------------------------------------ config
def test_defaults_are_s2c_and_the_reference_words_are_accepted():
    cfg = resolve_cam({})
    assert cfg["ssc"]["absent_prototypes"] is False
    assert (cfg["cpm"]["sam_resize"], cfg["cpm"]["peak_rule"], cfg["cpm"]["confidence_source"]) == (
        "sam", "s2c", "postprocessed")
    on = resolve_cam(SWITCHED)
    assert on["ssc"]["absent_prototypes"] is True
    assert {k: on["cpm"][k] for k in SWITCHED["cpm"]} == SWITCHED["cpm"]
    assert resolve_cam({"ssc": {"absent_prototypes": "true"}})["ssc"]["absent_prototypes"] is True  # --config


@pytest.mark.parametrize("cam,key", [
    ({"cpm": {"sam_resize": "squash"}}, "cam.cpm.sam_resize"),
    ({"cpm": {"peak_rule": "skimage"}}, "cam.cpm.peak_rule"),
    ({"sam_mode": "online", "cpm": {"confidence_source": "low_res"}}, "cam.cpm.confidence_source"),
    ({"ssc": {"absent_prototypes": "maybe"}}, "cam.ssc.absent_prototypes"),
    ({"cpm": {"confidence_source": "lowres"}}, "cam.cpm.confidence_source lowres needs cam.sam_mode online"),
])
def test_bad_words_are_one_line_errors_naming_the_key(cam, key):
    with pytest.raises(S2CError) as e:
        resolve_cam(cam)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_lowres_with_cpm_off_or_online_resolves():
    assert resolve_cam({"cpm": {"confidence_source": "lowres", "enabled": False}})["cpm"]["enabled"] is False
    assert resolve_cam({"sam_mode": "online", "cpm": {"confidence_source": "lowres"}})["sam_mode"] == "online"


# ------------------------------------------------------------------------------------ SSC
def _ssc_reference(feats, se, T=1.0):
    """``update()``'s SSC literally: torch_scatter.scatter_mean over the batch's ids, T a multiplier."""
    B, D = feats.shape[:2]
    H, W = se.shape[-2:]
    f = F.normalize(F.interpolate(feats, (H, W), mode="bilinear", align_corners=False), dim=1).view(B, D, -1)
    idx = se.view(B, 1, -1).long()
    n = int(idx.max()) + 1
    total = f.detach().new_zeros(B, D, n).scatter_add_(2, idx.expand_as(f), f.detach())
    count = f.new_zeros(B, D, n).scatter_add_(2, idx.expand_as(f), torch.ones_like(f))
    pt = F.normalize(total / count.clamp_min(1), dim=1)
    return F.cross_entropy(torch.bmm(pt.permute(0, 2, 1), f) * T, idx[:, 0], ignore_index=0)


def _two_image_se():
    se = torch.zeros(2, 16, 16, dtype=torch.long)
    se[0, :8, :8], se[0, :8, 8:], se[0, 8:, :8], se[0, 8:, 8:] = 1, 2, 3, 4
    se[1, :, :8], se[1, :, 8:] = 1, 2  # ids 3, 4 (and 0) absent from image 1
    se[0, :2, :2] = 0
    return se


def test_absent_prototypes_raise_the_loss_and_equal_the_reference_scatter_mean():
    torch.manual_seed(0)
    feats = torch.randn(2, 8, 4, 4, requires_grad=True)
    se = _two_image_se()
    off = ssc_loss(feats, se, 1.0, unassigned_prototype=True)
    on = ssc_loss(feats, se, 1.0, unassigned_prototype=True, absent_prototypes=True)
    assert on.item() > off.item()  # exp(0) = 1 more in the denominators of image 1
    ref = _ssc_reference(feats, se)
    assert on.item() == pytest.approx(ref.item(), rel=1e-5)
    g_on, = torch.autograd.grad(on, feats)
    g_ref, = torch.autograd.grad(ref, feats)
    assert torch.allclose(g_on, g_ref, atol=1e-6)
    # without the unassigned prototype, id 0 stays out either way
    assert ssc_loss(feats, se, 1.0, absent_prototypes=True).item() > ssc_loss(feats, se, 1.0).item()


def test_absent_prototypes_are_a_no_op_when_every_image_has_every_id():
    torch.manual_seed(1)
    feats = torch.randn(2, 8, 4, 4)
    se = torch.zeros(2, 16, 16, dtype=torch.long)
    for b in range(2):
        se[b, :8, :8], se[b, :8, 8:], se[b, 8:, :8], se[b, 8:, 8:] = 0, 1, 2, 3
    for unassigned in (True, False):
        a = ssc_loss(feats, se, 1.0, unassigned, absent_prototypes=True)
        assert torch.equal(a, ssc_loss(feats, se, 1.0, unassigned))


def test_compute_losses_passes_absent_prototypes(monkeypatch):
    seen = []

    def spy(*a, **kw):
        seen.append(a[4] if len(a) > 4 else kw.get("absent_prototypes"))
        return torch.zeros(())

    monkeypatch.setattr(objective, "ssc_loss", spy)

    class Net(torch.nn.Module):
        def forward(self, x):
            return {"logits": torch.zeros(1, 2), "feats": torch.zeros(1, 4, 2, 2), "cams": torch.zeros(1, 2, 2, 2)}

    batch = {"image": torch.zeros(1, 3, 8, 8), "labels": torch.ones(1, 2), "se": torch.ones(1, 8, 8, dtype=torch.long)}
    for flag in (False, True):
        objective.compute_losses(Net(), batch, resolve_cam({"ssc": {"absent_prototypes": flag}}))
    assert seen == [False, True]


# ------------------------------------------------------------------------------------ peaks
def _literal_peaks(cam: np.ndarray, min_distance: int, th: float) -> list[list[int]]:
    """``update()``'s points of one class map, (row, col): global max + peaks_valid[1:]."""
    g = int(np.argmax(cam))
    cand = peak_local_max(ndi.maximum_filter(cam, size=3, mode="constant"), min_distance=min_distance)
    cand = cand[cam[cand[:, 0], cand[:, 1]] > th]
    return [[g // cam.shape[1], g % cam.shape[1]]] + cand[1:].tolist()


def test_reference_peaks_drop_the_strongest_local_peak_when_the_global_max_is_in_the_border_band():
    H = W = 64
    cam = (_bump(H, W, 4, 32, 3, 1.0) + _bump(H, W, 30, 20, 3, 0.9) + _bump(H, W, 40, 45, 3, 0.8))[None, None]
    cam = cam / cam.max()
    labels = torch.ones(1, 1)
    (_, ours), = find_peaks(cam, labels, 10, 0.5)[0]
    (_, ref), = find_peaks_reference(cam, labels, 10, 0.5)[0]
    assert ours.tolist() == [[32.5, 4.5], [20.5, 30.5], [45.5, 40.5]]
    # the global max (row 4) is in the 10-px border band: peaks_valid[0] is the 0.9 bump, and it goes
    assert ref.tolist() == [[32.5, 4.5], [44.5, 39.5]]
    assert (ref - 0.5).flip(-1).long().tolist() == _literal_peaks(cam[0, 0].numpy(), 10, 0.5)


def test_reference_peaks_take_the_top_left_pixel_of_the_max_filter_plateau():
    H = W = 64
    cam = (_bump(H, W, 20, 20, 3, 1.0) + _bump(H, W, 40, 44, 3, 0.8))[None, None]
    (_, ours), = find_peaks(cam, torch.ones(1, 1), 10, 0.5)[0]
    (_, ref), = find_peaks_reference(cam, torch.ones(1, 1), 10, 0.5)[0]
    assert ours.tolist() == [[20.5, 20.5], [44.5, 40.5]]
    # the first local peak (the global max's plateau corner) is dropped; the second shifts up-left
    assert ref.tolist() == [[20.5, 20.5], [43.5, 39.5]]
    (_, single), = find_peaks_reference(cam, torch.ones(1, 1), 10, 0.5, single_peak=True)[0]
    assert single.tolist() == [[20.5, 20.5]]


def test_reference_peaks_test_tau_at_the_plateau_corner():
    """A peak just above τ whose top-left neighbour is below it: s2c keeps it, the reference not."""
    H = W = 64
    cam = torch.zeros(1, 1, H, W)
    cam[0, 0] = _bump(H, W, 20, 20, 3, 1.0)
    cam[0, 0, 40, 44], cam[0, 0, 39, 43] = 0.55, 0.45
    (_, ours), = find_peaks(cam, torch.ones(1, 1), 10, 0.5)[0]
    (_, ref), = find_peaks_reference(cam, torch.ones(1, 1), 10, 0.5)[0]
    assert [44.5, 40.5] in ours.tolist() and ref.tolist() == [[20.5, 20.5]]


def test_reference_peaks_equal_the_literal_rule_on_random_maps_and_keep_padding_out():
    rng = np.random.default_rng(0)
    for _ in range(4):
        m = ndi.gaussian_filter(rng.random((96, 96)), 5)
        m = ((m - m.min()) / (m.max() - m.min())).astype(np.float32)
        (_, ref), = find_peaks_reference(torch.from_numpy(m)[None, None], torch.ones(1, 1), 20, 0.5)[0]
        assert (ref - 0.5).flip(-1).long().tolist() == _literal_peaks(m, 20, 0.5)
    cam = (_bump(64, 64, 10, 10, 4, 1.0) + _bump(64, 64, 40, 40, 4, 0.9))[None, None]
    valid = torch.ones(1, 64, 64, dtype=torch.bool)
    valid[:, :20, :20] = False
    (_, pts), = find_peaks_reference(cam, torch.ones(1, 1), 8, 0.5, valid=valid)[0]
    assert pts[0].tolist() == [40.5, 40.5] and all(not (x < 20 and y < 20) for x, y in pts.tolist())


def test_cpm_peaks_follows_peak_rule():
    cam = (_bump(64, 64, 20, 20, 3, 1.0) + _bump(64, 64, 40, 44, 3, 0.8))[None, None]
    batch = {"labels": torch.ones(1, 1), "valid": torch.ones(1, 64, 64, dtype=torch.bool)}
    cpm = resolve_cam({"cpm": {"min_distance": 10}})["cpm"]
    (_, a), = objective.cpm_peaks(cam, batch, cpm)[0]
    (_, b), = objective.cpm_peaks(cam, batch, cpm | {"peak_rule": "reference"})[0]
    assert a.tolist() == [[20.5, 20.5], [44.5, 40.5]] and b.tolist() == [[20.5, 20.5], [43.5, 39.5]]


# ------------------------------------------------------------------------------------ SAM input
def test_squashed_sam_input_is_the_reference_formula():
    img = normalize(_image(48, 64))[None]  # a non-square crop: squashed, not letterboxed
    ref_denorm = Normalize([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], [1 / s for s in IMAGENET_STD])
    explicit = F.interpolate(ref_denorm(img) * 255, (1024, 1024), mode="bilinear", align_corners=True).to(torch.uint8)
    ours = sp.squash_sam_input(denormalize_255(img))
    assert ours.dtype == torch.uint8 and ours.shape == (1, 3, 1024, 1024)
    assert torch.equal(ours, explicit)
    # truncated, not rounded: SAM's own path rounds first and resizes the longest side to 1024
    assert not torch.equal(ours, F.interpolate(denormalize_255(img), (1024, 1024), mode="bilinear",
                                               align_corners=True).round().to(torch.uint8))


def test_encode_squashed_runs_the_encoder_on_the_squashed_input(tiny_sam):  # noqa: F811
    x = denormalize_255(normalize(_image(32, 40))[None])
    emb = sp.encode_squashed(tiny_sam, x)
    with torch.no_grad():
        want = tiny_sam.image_encoder(tiny_sam.preprocess(sp.squash_sam_input(x).float()))
    assert torch.equal(emb, want)


def test_squashed_points_scale_each_axis():
    p = sp.squashed_points(np.array([[10.0, 20.0]]), (64, 128), 1024)
    assert p.tolist() == [[80.0, 320.0]]


def test_sam_resize_reference_reaches_the_encoder_and_the_squashed_frame(monkeypatch, tiny_sam):  # noqa: F811
    """Online: the squashed encoder, prompts × (1024 / w, 1024 / h), decoded in the 1024² frame."""
    seen = {}
    real_decode = sp.decode_prompts

    def spy_encode(sam, images):
        seen["enc"] = images.shape
        return torch.zeros(len(images), 256, 64, 64)

    def spy_decode(sam, emb, points, orig_size, input_size, mmi=2, **kw):
        seen.update(points=[np.asarray(p).tolist() for p in points], orig=orig_size, input=input_size,
                    lowres=kw.get("return_lowres"))
        return real_decode(sam, emb, points, orig_size, input_size, mmi, **kw)

    monkeypatch.setattr(sp, "encode_squashed", spy_encode)
    monkeypatch.setattr(sp, "decode_prompts", spy_decode)
    cam = _bump(32, 64, 16, 40, 3, 1.0)[None, None]
    batch = {"image": torch.zeros(1, 3, 32, 64), "labels": torch.ones(1, 1),
             "valid": torch.ones(1, 32, 64, dtype=torch.bool)}
    cpm = resolve_cam({"cpm": {"single_peak": True, "sam_resize": "reference"}})["cpm"]
    t = objective.cpm_targets(tiny_sam, batch, cam, cpm, "online")
    assert t.shape == (1, 32, 64) and seen["enc"] == (1, 3, 32, 64)
    # the peak's pixel index (40, 16) × (1024 / 64, 1024 / 32)
    assert seen["points"] == [[[640.0, 512.0]]] and seen["orig"] == seen["input"] == (1024, 1024)
    assert seen["lowres"] is True


# ------------------------------------------------------------------------------------ confidence
def test_lowres_confidence_turns_a_covered_pixel_with_a_negative_lowres_logit_into_background():
    cam = torch.zeros(2, 8, 8)
    cam[0, 2:6, 2:6], cam[1, 4:8, 4:8] = 0.8, 0.6
    logits = torch.full((2, 8, 8), -5.0)
    logits[0, 2:6, 2:6] = 3.0
    logits[1, 4:8, 4:8] = 2.0
    alpha = logits.clone()
    alpha[0, 2, 2] = -1.0   # covered by class 0 only: negative → background
    alpha[0, 5, 5] = -1.0   # covered by both: class 1 (positive) wins
    post = cpm_pseudo_label(cam, torch.tensor([0, 1]), logits)
    low = cpm_pseudo_label(cam, torch.tensor([0, 1]), logits, alpha_logits=alpha)
    assert post[2, 2] == 1 and low[2, 2] == 0
    assert low[5, 5] == 2 and post[5, 5] == 1  # 3 × 0.8 beats 2 × 0.6; −1 × 0.8 does not
    differ = (post != low).nonzero().tolist()
    assert differ == [[2, 2], [5, 5]]
    assert torch.equal(cpm_pseudo_label(cam, torch.tensor([0, 1]), logits, alpha_logits=logits), post)


def test_lowres_straight_is_one_resize_where_lowres_to_size_is_two():
    torch.manual_seed(0)
    low = torch.randn(2, 256, 256)
    straight = sp.lowres_straight(low, (1024, 1024), (64, 64))
    assert torch.equal(straight, F.interpolate(low[:, None], (64, 64), mode="bilinear", align_corners=False)[:, 0])
    post = sp.lowres_to_size(low, (1024, 1024), (64, 64))
    assert not torch.equal(straight, post) and (straight - post).abs().max() < low.abs().max()
    # a letterboxed (non-square) frame: only the image part, at the output's scale
    part = sp.lowres_straight(low, (512, 1024), (32, 64))
    assert torch.equal(part, F.interpolate(low[:, None], (64, 64), mode="bilinear", align_corners=False)[:, 0, :32])


def test_confidence_source_lowres_passes_lowres_logits_online_refuses_cached(monkeypatch, tiny_sam):  # noqa: F811
    seen = {}
    real = objective.cpm_pseudo_label

    def spy(cam, classes, logits, valid, *a):
        seen["logits"], seen["alpha"] = logits, a[4] if len(a) > 4 else None
        return real(cam, classes, logits, valid, *a)

    monkeypatch.setattr(objective, "cpm_pseudo_label", spy)
    monkeypatch.setattr(sp, "encode_images", lambda sam, images, amp_dtype=None: torch.randn(len(images), 256, 64, 64))
    cam = _bump(48, 48, 24, 24, 4, 1.0)[None, None]
    batch = {"image": torch.zeros(1, 3, 48, 48), "labels": torch.ones(1, 1),
             "valid": torch.ones(1, 48, 48, dtype=torch.bool)}
    cpm = resolve_cam({"sam_mode": "online", "cpm": {"single_peak": True, "confidence_source": "lowres"}})["cpm"]
    torch.manual_seed(0)
    objective.cpm_targets(tiny_sam, batch, cam, cpm, "online")
    assert seen["alpha"] is not None and seen["alpha"].shape == seen["logits"].shape == (1, 48, 48)
    torch.manual_seed(0)  # the stub's embedding again, decoded at the peak's pixel index (24, 24)
    low, _ = sp.decode_prompts(tiny_sam, torch.randn(1, 256, 64, 64)[0], [np.array([[24.0, 24.0]])], (48, 48),
                               (1024, 1024), 2, return_lowres=True)
    assert torch.equal(seen["alpha"], sp.lowres_straight(low, (1024, 1024), (48, 48)))
    assert torch.equal(seen["logits"], sp.lowres_to_size(low, (1024, 1024), (48, 48)))
    objective.cpm_targets(tiny_sam, batch, cam, cpm | {"confidence_source": "postprocessed"}, "online")
    assert seen["alpha"] is None
    with pytest.raises(S2CError, match="cam.cpm.confidence_source lowres needs cam.sam_mode online"):
        objective.cpm_targets(tiny_sam, batch, cam, cpm, "cached")


# ------------------------------------------------------------------------------------ all four
def _update_targets(sam, image, labels, cam_ms, min_distance, th):
    """``update()``'s Ŝ literally (its CPM branch after the MS-CAM), in s2c's coding (0 bg, c+1)."""
    B, C, H, W = cam_ms.shape
    denorm = Normalize([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], [1 / s for s in IMAGENET_STD])
    img_sam = F.interpolate(denorm(image) * 255, (1024, 1024), mode="bilinear", align_corners=True).to(torch.uint8)
    with torch.no_grad():
        features = sam.image_encoder(sam.preprocess(img_sam))
    out = torch.zeros(B, H, W, dtype=torch.long)
    for i in range(B):
        sam_conf = -1e5 * torch.ones(C, H, W)
        for ct in labels[i].nonzero(as_tuple=False)[:, 0].tolist():
            peaks = np.array(_literal_peaks(cam_ms[i, ct].numpy(), min_distance, th))
            points = torch.from_numpy(np.flip(peaks, -1).copy() * 1024 / H).float()[None]
            with torch.no_grad():
                sparse, dense = sam.prompt_encoder(points=(points, torch.ones(1, len(peaks))), boxes=None, masks=None)
                low, _ = sam.mask_decoder(image_embeddings=features[i:i + 1],
                                          image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                          dense_prompt_embeddings=dense, multimask_output=True)
                mask = sam.postprocess_masks(low, (1024, 1024), (H, W))[0, 2] > 0
            conf = F.interpolate(low[:, 2:3], (H, W), mode="bilinear", align_corners=False)[0, 0]
            sam_conf[ct][mask] = conf[mask] * cam_ms[i, ct][mask].mean()
        score, arg = sam_conf.max(0)
        out[i] = torch.where(score < 0, 0, arg + 1)
    return out


def test_all_four_switches_give_update_s_targets(tiny_sam):  # noqa: F811
    H = W = 64
    image = torch.stack([normalize(_image(H, W, s)) for s in (1, 2)])
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    cam = torch.zeros(2, 3, H, W)
    cam[0, 0] = _bump(H, W, 4, 30, 4, 1.0) + _bump(H, W, 30, 20, 4, 0.9) + _bump(H, W, 44, 44, 4, 0.7)
    cam[0, 1] = _bump(H, W, 32, 32, 8, 1.0)
    cam[1, 1] = _bump(H, W, 20, 40, 5, 1.0) + _bump(H, W, 45, 15, 5, 0.8)
    cam[1, 2] = _bump(H, W, 40, 40, 6, 1.0)
    cam = cam / cam.amax((2, 3), keepdim=True).clamp_min(1e-5)
    batch = {"image": image, "labels": labels, "valid": torch.ones(2, H, W, dtype=torch.bool)}
    cpm = resolve_cam({**SWITCHED, "cpm": {**SWITCHED["cpm"], "min_distance": 10}})["cpm"]
    ours = objective.cpm_targets(tiny_sam, batch, cam, cpm, "online")
    ref = _update_targets(tiny_sam, image, labels, cam, 10, 0.5)
    assert torch.equal(ours, ref), f"{int((ours != ref).sum())} px differ"
    # s2c's defaults (its resize and peaks, here) give other targets on the same inputs
    s2c = objective.cpm_targets(tiny_sam, batch, cam, resolve_cam({"sam_mode": "online", "cpm": {"min_distance": 10}})["cpm"],
                         "online")
    assert not torch.equal(s2c, ref)
