"""Segment-everything: merge rules, agreement metric, fast generator == stock generator."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from s2c.defaults import everything_settings, resolve_everything_cfg
from s2c.errors import S2CError
from s2c.sam.decoder import predict_masks
from s2c.sam.everything import (
    compact_dtype,
    fast_masks,
    merge_masks,
    se_agreement,
    se_map,
    stock_masks,
)


def tiny_sam(seed: int = 0, dim: int = 32) -> Sam:
    """A SAM with the real architecture at a tiny width (fast decoder) and random weights."""
    torch.manual_seed(seed)
    enc = ImageEncoderViT(
        img_size=1024, patch_size=16, embed_dim=16, depth=1, num_heads=1, mlp_ratio=1, out_chans=dim,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), window_size=8, global_attn_indexes=[],
    )
    pe = PromptEncoder(embed_dim=dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=4)
    dec = MaskDecoder(
        num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32, num_heads=2),
        transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=16,
    )
    with torch.no_grad():
        # random hypernetworks give logits of ~0.03: scale them so stability scores are meaningful
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(100)
            mlp.layers[-1].bias.mul_(100)
    return Sam(enc, pe, dec, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def test_merge_smallest_area_vs_predicted_iou():
    # big square (iou .99) contains a small square (iou .90); a third mask overlaps the big one only
    big = np.zeros((10, 10), bool); big[1:9, 1:9] = True
    small = np.zeros((10, 10), bool); small[3:5, 3:5] = True
    side = np.zeros((10, 10), bool); side[7:10, 7:10] = True
    masks = np.stack([big, small, side])
    areas = masks.reshape(3, -1).sum(1)
    iou = np.array([0.99, 0.90, 0.95])

    sa = merge_masks(masks, areas, iou, "smallest_area")
    # the small square and the side mask sit on top of the big square
    assert sa[4, 4] != sa[2, 2] and sa[8, 8] != sa[2, 2]
    assert sa[0, 0] == 0 and len(np.unique(sa)) == 4  # unassigned + 3 segments
    assert set(np.unique(sa)) == {0, 1, 2, 3}  # renumbered 1..N

    pi = merge_masks(masks, areas, iou, "predicted_iou")
    # the big square has the highest predicted IoU: it owns the small square's pixels
    assert pi[4, 4] == pi[2, 2]
    assert pi[8, 8] == pi[2, 2]  # overlap of big (0.99) and side (0.95) → big
    assert pi[9, 9] != pi[2, 2] and pi[9, 9] > 0  # side keeps its own pixels
    assert set(np.unique(pi)) == {0, 1, 2}  # the fully hidden small mask is gone, ids stay compact


def test_merge_tie_and_empty():
    m = np.zeros((2, 4, 4), bool)
    m[0, :2] = True
    m[1, :2] = True  # identical masks, equal area: the earlier one wins
    out = merge_masks(m, [8, 8], [0.9, 0.9], "smallest_area")
    assert set(np.unique(out)) == {0, 1}
    assert merge_masks(np.zeros((0, 3, 5), bool), [], [], "smallest_area").shape == (3, 5)
    with pytest.raises(S2CError, match="overlap rule"):
        merge_masks(m, [8, 8], [0.9, 0.9], "largest")


def test_more_than_255_and_65535_segments_do_not_wrap():
    # 300 disjoint 1-pixel-row segments → ids up to 300 (would wrap in uint8)
    h, w = 301, 4  # the last row stays unassigned
    masks = np.zeros((300, h, w), bool)
    masks[np.arange(300), np.arange(300)] = True
    out = compact_dtype(merge_masks(masks, np.full(300, 4), np.linspace(0.9, 1, 300), "smallest_area"))
    assert out.dtype == np.uint16 and out.max() == 300 and len(np.unique(out)) == 301
    big = np.arange(70000, dtype=np.uint32).reshape(700, 100) + 1
    assert compact_dtype(big).dtype == np.uint32 and compact_dtype(big).max() == 70000


def test_agreement_metric():
    a = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3]])
    relabelled = np.array([[5, 5, 9, 9], [5, 5, 9, 9], [0, 0, 7, 7]])
    assert se_agreement(a, relabelled) == pytest.approx(1.0)
    merged = a.copy(); merged[merged == 3] = 2  # two segments merged into one
    got = se_agreement(a, merged)
    # labels {0,1,2,3} vs {0,1,2}: 0 and 1 match exactly, 2↔2 IoU 4/6, 3 unmatched
    assert got == pytest.approx((1 + 1 + 4 / 6 + 0) / 4)


def test_cfg_validation_and_settings():
    with pytest.raises(S2CError, match="unknown config key"):
        resolve_everything_cfg({"points_per_sid": 8})
    with pytest.raises(S2CError, match="overlap"):
        resolve_everything_cfg({"overlap": "biggest"})
    s = everything_settings({"impl": "stock", "points_per_batch": 8})
    assert "points_per_batch" not in s and "skip_covered" not in s  # no effect on the output
    assert s["points_per_side"] == 32 and s["pred_iou_thresh"] == 0.88 and s["box_nms_thresh"] == 0.7


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    im = np.full((96, 128, 3), 40, np.uint8)
    im[10:60, 20:70] = (220, 30, 30)
    im[50:90, 80:120] = (30, 200, 40)
    return (im + rng.integers(0, 20, im.shape)).astype(np.uint8)


def test_fast_equals_stock_on_tiny_sam(scene):
    """Same masks as SamAutomaticMaskGenerator (batching, low-res IoU filter, full-res scoring, NMS).

    The low-res stability pre-filter is disabled (margin 1): random-weight masks are pure noise, for
    which low-res and full-res stability differ far more than for real SAM masks (see the slow test).
    """
    sam = tiny_sam()
    # loose thresholds so that random weights still give masks on both paths
    cfg = {"points_per_side": 6, "points_per_batch": 7, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.7,
           "stability_score_offset": 0.1, "box_nms_thresh": 0.95, "stability_margin": 1.0}
    s = stock_masks(sam, scene, cfg)
    f = fast_masks(sam, scene, {**cfg, "fast_points_per_batch": 16})
    assert len(s["masks"]) > 0, "test setting produced no masks; it would not compare anything"
    assert len(f["masks"]) == len(s["masks"])
    np.testing.assert_array_equal(f["masks"].numpy(), s["masks"])
    np.testing.assert_allclose(f["iou_preds"], s["iou_preds"], atol=1e-5)
    np.testing.assert_array_equal(f["areas"], s["areas"])
    for rule in ("smallest_area", "predicted_iou"):
        a = se_map(sam, scene, {**cfg, "impl": "stock", "overlap": rule})
        b = se_map(sam, scene, {**cfg, "impl": "fast", "overlap": rule})
        assert a.shape == scene.shape[:2] and se_agreement(a, b) == 1.0


@pytest.mark.parametrize("model", ["tiny", "vit_test"])
def test_shared_decoder_equals_sam_mask_decoder(model):
    """The copy-free decoder must give SAM's MaskDecoder outputs (multimask) for a batch of prompts:
    bit-identical with SAM's upscaling (segment everything), to float rounding with ours (CPM)."""
    from s2c.sam.build import build_sam

    sam = tiny_sam(seed=1) if model == "tiny" else build_sam("vit_test")
    torch.manual_seed(2)
    c = sam.prompt_encoder.embed_dim
    emb = torch.randn(1, c, 64, 64)
    pe = sam.prompt_encoder.get_dense_pe()
    pts = torch.rand(5, 2, 2) * 1024
    labels = torch.tensor([[1, 1], [1, 0], [1, -1], [0, 1], [1, 1]], dtype=torch.int)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
        ref_low, ref_iou = sam.mask_decoder(emb, pe, sparse, dense, multimask_output=True)
        low, iou = predict_masks(sam.mask_decoder, emb, pe, sparse, dense, sam_upscaling=True)
        low_cl, iou_cl = predict_masks(sam.mask_decoder, emb, pe, sparse, dense)
    assert low.shape == ref_low.shape == (5, 3, 256, 256)
    assert torch.equal(low, ref_low) and torch.equal(iou, ref_iou)
    torch.testing.assert_close(low_cl, ref_low, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou_cl, ref_iou, atol=1e-5, rtol=1e-5)


class QuadrantSam(torch.nn.Module):
    """A stand-in SAM whose every point prompt returns: its image quadrant (finest output), its half,
    the whole image — all with confident logits (±10) and predicted IoU 0.99."""

    mask_threshold = 0.0
    postprocess_masks = Sam.postprocess_masks

    def __init__(self):
        super().__init__()
        self.image_encoder = torch.nn.Module()
        self.image_encoder.img_size = 1024
        self.prompt_encoder = self
        self.mask_decoder = self.decode
        self.calls = 0

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, points, boxes, masks):  # the prompt encoder: pass coordinates through
        return points[0].float(), None

    def get_dense_pe(self):
        return None

    def decode(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        xy = sparse_prompt_embeddings[:, 0] / 4  # input px → low-res px
        yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
        right = (xy[:, 0] >= 128)[:, None, None]
        bottom = (xy[:, 1] >= 128)[:, None, None]
        half = (xx >= 128)[None] == right
        quad = half & ((yy >= 128)[None] == bottom)
        whole = torch.ones_like(quad)
        masks = torch.stack([quad, half, whole], 1).float() * 20 - 10
        return masks, torch.full(masks.shape[:2], 0.99)


def test_skip_covered_skips_points_inside_accepted_fine_masks():
    sam = QuadrantSam()
    image = np.zeros((256, 256, 3), np.uint8)
    emb = torch.zeros(256, 64, 64)
    cfg = {"points_per_side": 8}
    full = fast_masks(sam, image, cfg, embedding=emb)
    skip = fast_masks(sam, image, {**cfg, "skip_covered": True}, embedding=emb)
    assert full["n_decoded"] == 64
    # level 0 (every 4th point) has one point per quadrant; its accepted quadrant mask covers the rest
    assert skip["n_decoded"] == 4
    assert len(full["masks"]) == len(skip["masks"]) == 7  # 4 quadrants, 2 halves, the whole image
    a = merge_masks(full["masks"], full["areas"], full["iou_preds"])
    b = merge_masks(skip["masks"], skip["areas"], skip["iou_preds"])
    assert a.max() == 4 and se_agreement(a, b) == 1.0
    # when the finest outputs are rejected (unstable), nothing is skipped
    sam_unstable = QuadrantSam()
    orig = sam_unstable.decode

    def fuzzy_quadrants(**kw):
        m, iou = orig(**kw)
        m[:, 0] = m[:, 0].clamp(-0.5, 0.5)  # stability of the quadrant mask → 0
        return m, iou

    sam_unstable.mask_decoder = fuzzy_quadrants
    assert fast_masks(sam_unstable, image, {**cfg, "skip_covered": True}, embedding=emb)["n_decoded"] == 64


@pytest.mark.slow
def test_real_mobile_sam_fast_vs_stock(tmp_path, coco_mini_root):
    """MobileSAM on one real COCO image at 8 points per side: fast and stock maps agree."""
    from s2c.io import read_image
    from s2c.sam.build import build_sam
    from s2c.weights import ensure_mobile_sam
    from pathlib import Path

    weights = Path(__file__).resolve().parents[1] / "weights"
    sam = build_sam("vit_t", ensure_mobile_sam(weights))
    im = read_image(sorted((coco_mini_root / "val").glob("*.jpg"))[0])
    im = np.ascontiguousarray(im[::2, ::2])  # half size keeps the test short
    a = se_map(sam, im, {"impl": "stock", "points_per_side": 8})
    b = se_map(sam, im, {"impl": "fast", "points_per_side": 8})  # default low-res pre-filter on
    assert a.max() >= 3
    assert se_agreement(a, b) >= 0.99
