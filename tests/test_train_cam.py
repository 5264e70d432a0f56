"""Tests for the S2C CAM trainer: config, training dataset, cached/online CPM, ablation switches,
resume after a kill, DDP with 2 gloo processes, the CLI, and (slow) cached vs online on real data."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

from s2c.data import open_dataset
from s2c.data.cam_train import CAMTrainDataset, collate, reindex_np
from s2c.data.transforms import Geometry
from s2c.errors import S2CError
from s2c.models.classifier import CAMClassifier
from s2c.sam.cache import EmbeddingReader, PartWriter, SEMapReader, make_identity
from s2c import cam_training, objective
from s2c.stages import train_cam as tc

SMALL_AUG = {"resize_long": [64, 96], "crop_size": 64}


# ------------------------------------------------------------------------------------ fixtures
class TinyBackbone(nn.Module):
    """Three stride-2 convs: (B,3,H,W) → (B,16,H/8,W/8); the Backbone attributes CAMClassifier uses."""

    out_channels, low_channels, output_stride = 16, 8, 8

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        return self.net(x)

    def stem_modules(self):
        return []


def tiny_model(C=20, seed=0):
    torch.manual_seed(seed)
    return CAMClassifier(TinyBackbone(), C, feat_dim=8)


@pytest.fixture(scope="module")
def caches(synthetic_voc, tmp_path_factory):
    """vit_test embeddings of the synthetic train split + SE maps from its GT connected components."""
    from s2c.stages.sam_embed import RANDOM_CHECKPOINT, run_sam_embed

    d = tmp_path_factory.mktemp("caches")
    dcfg = {"kind": "voc", "root": str(synthetic_voc), "class_set": "voc20", "cache_dir": str(d / "dc")}
    ds = open_dataset(dcfg, "train")
    emb = run_sam_embed(dcfg, "train", 0, 1, d / "embed.part0.zarr", d / "w",
                        {"model_type": "vit_test", "num_workers": 0}, "cpu", progress=False)
    se = d / "se.part0.zarr"
    w = PartWriter(se, make_identity("se", "vit_test", RANDOM_CHECKPOINT, {}, ds.image_list_hash()), ds.ids, 0, 1)
    for i, id_ in enumerate(ds.ids):
        m = ds.load_mask(id_)
        w.write_se(i, ndi.label((m > 0) & (m < 255))[0] * 3)  # sparse ids: the loader must re-index
    w.finalize()
    return {"data": dcfg, "embed": emb, "se": se, "ds": ds, "dir": d}


# ------------------------------------------------------------------------------------ config
def test_resolve_cfg_defaults_ablations_and_errors():
    cfg = tc.resolve_cfg({})
    assert cfg["lr"] == 0.02 and cfg["cpm"]["prompt_cam"] == "multiscale"  # every reference value: test_reference_defaults
    assert tc.resolve_cfg({"backbone": "resnet50"})["backbone"] == "resnet50"  # model keys pass through
    base = tc.resolve_cfg({"ablation": "baseline"})
    assert not base["ssc"]["enabled"] and not base["cpm"]["enabled"]
    assert tc.resolve_cfg({"ablation": "ssc_logit"})["ssc"]["level"] == "logit"
    assert tc.resolve_cfg({"ablation": "no_background"})["cpm"]["loss"] == "l1"
    assert tc.resolve_cfg({"cpm": {"tau": 0.3}})["cpm"]["min_distance"] == 20  # nested merge keeps the rest
    with pytest.raises(S2CError, match="cam.cpm.bogus"):
        tc.resolve_cfg({"cpm": {"bogus": 1}})
    with pytest.raises(S2CError, match="cam.cpm.alpha_sam"):
        tc.resolve_cfg({"cpm": {"alpha_sam": "iou"}})
    with pytest.raises(S2CError, match="ablation"):
        tc.resolve_cfg({"ablation": "nope"})


# ------------------------------------------------------------------------------------ dataset
def test_dataset_items_geometry_se_and_determinism(caches):
    ds = caches["ds"]
    data = CAMTrainDataset(ds, SMALL_AUG, EmbeddingReader(caches["embed"]), SEMapReader(caches["se"]), seed=1)
    it = data[0]
    assert it["image"].shape == (3, 64, 64) and it["labels"].shape == (20,)
    assert it["embedding"].shape == (256, 64, 64) and it["embedding"].dtype == torch.float16
    assert tuple(it["orig_size"].tolist()) == ds.load_image(ds.ids[0]).shape[:2]
    # SE re-indexed per crop to 1..N; it lines up with the GT mask under the same geometry
    ids = torch.unique(it["se"]).tolist()
    assert ids == list(range(ids[0], ids[-1] + 1)) and ids[0] in (0, 1)
    geo = Geometry.from_dict(it["geometry"])
    gt = geo.warp_to_crop(ds.load_mask(ds.ids[0]), "nearest", fill=255)
    fg = (gt > 0) & (gt < 255)
    assert torch.equal(it["se"] > 0, torch.from_numpy(fg))
    assert torch.equal(it["valid"], torch.from_numpy(geo.valid_mask()))
    again = data[0]
    assert torch.equal(again["image"], it["image"]) and again["geometry"] == it["geometry"]
    data.set_epoch(1)
    assert any(data[i]["geometry"] != CAMTrainDataset(ds, SMALL_AUG, seed=1)[i]["geometry"] for i in range(4))
    b = collate([data[0], data[1]])
    assert b["image"].shape == (2, 3, 64, 64) and isinstance(b["geometry"][0], Geometry) and len(b["id"]) == 2


def test_dataset_rejects_mismatched_cache(caches, synthetic_voc):
    ds_val = open_dataset(caches["data"], "val")
    with pytest.raises(S2CError, match="not in the embedding cache"):
        CAMTrainDataset(ds_val, SMALL_AUG, EmbeddingReader(caches["embed"]))


def test_reindex_np():
    assert reindex_np(np.array([[0, 7], [3, 7]])).tolist() == [[0, 2], [1, 2]]
    assert reindex_np(np.array([[5, 9]])).tolist() == [[1, 2]]


# ------------------------------------------------------------------------------------ CPM with a fake SAM
R = 6.0  # disc radius (original-image pixels) of the fake SAM masks


def fake_decode(sam, embedding, points, orig_size, input_size, multimask_index=2, batching="pad", **kw):
    """Deterministic stand-in for SAM: each prompt → a union of discs around its points (pixel-index coords)."""
    H, W = orig_size
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    out = []
    for p in points:
        p = torch.as_tensor(np.asarray(p), dtype=torch.float32).reshape(-1, 2)
        d = torch.sqrt((xx[None] - p[:, 0, None, None]) ** 2 + (yy[None] - p[:, 1, None, None]) ** 2).amin(0)
        out.append(R - d)
    return torch.stack(out), torch.ones(len(points))


def fake_encode(sam, images, amp_dtype=None):
    return torch.zeros(len(images), 256, 64, 64)


@pytest.fixture
def fake_sam(monkeypatch):
    import s2c.sam.prompt as sp

    monkeypatch.setattr(sp, "decode_prompts", fake_decode)
    monkeypatch.setattr(sp, "encode_images", fake_encode)


def _blob_cam(C, H, W, centres):
    cam = torch.zeros(1, C, H, W)
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    for c, pts in centres.items():
        for (x, y, h, *s2) in pts:
            g = h * torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (s2[0] if s2 else 9.0)))
            cam[0, c] = torch.maximum(cam[0, c], g)
    return cam


def _batch_for(geo: Geometry, labels, orig=(40, 60)):
    return {"labels": labels, "valid": torch.from_numpy(geo.valid_mask())[None], "geometry": [geo],
            "orig_size": torch.tensor([orig]), "input_size": torch.tensor([[40, 60]]),
            "embedding": torch.zeros(1, 256, 64, 64), "image": torch.zeros(1, 3, *geo.crop_size)}


def test_cpm_cached_maps_peaks_back_and_masks_into_crop(fake_sam):
    """Peaks go crop → original and masks original → crop: with a 2× resize and flip, the class mask
    in the crop is the disc around the peak, of radius 2R."""
    cpm = tc.resolve_cfg({})["cpm"] | {"min_distance": 5}
    geo = Geometry((40, 60), (80, 120), True, (10, 20), (48, 64))
    cam = _blob_cam(3, 48, 64, {1: [(30, 20, 1.0)]})
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    t = objective.cpm_targets(None, _batch_for(geo, labels), cam, cpm, "cached")[0]
    yy, xx = torch.meshgrid(torch.arange(48).float() + 0.5, torch.arange(64).float() + 0.5, indexing="ij")
    disc = ((xx - 30.5) ** 2 + (yy - 20.5) ** 2) < (2 * R) ** 2
    inter = ((t == 2) & disc).sum().item()
    union = ((t == 2) | disc).sum().item()
    assert inter / union > 0.9
    assert set(torch.unique(t).tolist()) == {0, 2}
    # online: the crop itself is the image, no geometry → the disc has radius R
    t_on = objective.cpm_targets(None, _batch_for(geo, labels), cam, cpm, "online")[0]
    small = ((xx - 30.5) ** 2 + (yy - 20.5) ** 2) < R ** 2
    assert ((t_on == 2) & small).sum() / ((t_on == 2) | small).sum() > 0.8


def test_cpm_padding_is_ignored(fake_sam):
    cpm = tc.resolve_cfg({})["cpm"] | {"min_distance": 5}
    geo = Geometry((40, 60), (40, 60), False, (0, 0), (48, 64))  # 8 rows / 4 cols of padding
    cam = _blob_cam(3, 48, 64, {0: [(20, 20, 1.0)]})
    t = objective.cpm_targets(None, _batch_for(geo, torch.tensor([[1.0, 0.0, 0.0]])), cam, cpm, "cached")[0]
    assert (t[40:] == 255).all() and (t[:, 60:] == 255).all() and (t[:40, :60] != 255).all()


def _overlap_case():
    """Two classes; class 0 has two peaks (1.0 and a weak 0.55), class 1 one broad peak (α_cam ≈ 3×
    class 0's) whose SAM mask overlaps the weak one's, so α_sam and α_cam disagree in the overlap."""
    cam = _blob_cam(2, 48, 64, {0: [(12, 24, 1.0), (40, 24, 0.55)], 1: [(35, 24, 1.0, 200.0)]})
    geo = Geometry.identity((48, 64))
    return cam, _batch_for(geo, torch.tensor([[1.0, 1.0]]), orig=(48, 64))


@pytest.mark.parametrize("override", [
    {"single_peak": True}, {"confidence": "none"}, {"confidence": "sam"}, {"confidence": "cam"},
    {"background": "tau", "tau": 4.0}, {"alpha_sam": "sigmoid"}, {"threshold": 0.95}, {"multimask_index": 0},
])
def test_cpm_switches_change_pseudo_labels(fake_sam, override, monkeypatch):
    cam, batch = _overlap_case()
    cpm = tc.resolve_cfg({})["cpm"] | {"min_distance": 5}
    seen = {}

    def spy(*a, **kw):
        seen["mmi"] = a[5] if len(a) > 5 else kw.get("multimask_index")
        return fake_decode(*a, **kw)

    import s2c.sam.prompt as sp
    monkeypatch.setattr(sp, "decode_prompts", spy)
    ref = objective.cpm_targets(None, batch, cam, cpm, "cached")
    assert seen["mmi"] == 2
    alt = objective.cpm_targets(None, batch, cam, cpm | override, "cached")
    if "multimask_index" in override:
        assert seen["mmi"] == 0  # the fake SAM has one output; the switch must reach the decoder
    else:
        assert not torch.equal(ref, alt), override


def _loss_batch(caches, cfg, seed=0):
    data = CAMTrainDataset(caches["ds"], cfg["augment"], EmbeddingReader(caches["embed"]), SEMapReader(caches["se"]), seed)
    return collate([data[i] for i in range(4)])


@pytest.mark.parametrize("ablation", ["baseline", "ssc_logit", "ssc_feature", "cpm_only", "single_peak", "no_confidence",
                                      "sam_confidence", "cam_confidence", "no_background"])
def test_every_ablation_changes_the_loss(caches, fake_sam, ablation):
    full = tc.resolve_cfg({"augment": SMALL_AUG, "cpm": {"min_distance": 3, "threshold": 0.3}})
    alt = tc.resolve_cfg({"augment": SMALL_AUG, "ablation": ablation, "cpm": {"min_distance": 3, "threshold": 0.3}})
    batch = _loss_batch(caches, full)
    torch.manual_seed(0)
    # positive CAM weights so the tiny random model has CAM peaks for every class
    model = tiny_model()
    with torch.no_grad():
        model.classifier.weight.abs_()
    a = objective.compute_losses(model, batch, full, None, use_cpm=True)
    b = objective.compute_losses(model, batch, alt, None, use_cpm=alt["cpm"]["enabled"])
    assert a["loss_ssc"] > 0 and a["loss_cpm"] > 0
    if ablation == "baseline":
        assert b["loss_ssc"] == 0 and b["loss_cpm"] == 0 and b["loss"] == a["loss_cls"]
    elif ablation.startswith("ssc_"):
        assert b["loss_cpm"] == 0
        assert (b["loss_ssc"] == a["loss_ssc"]) == (ablation == "ssc_feature")
    elif ablation == "cpm_only":
        assert b["loss_ssc"] == 0 and b["loss_cpm"] == a["loss_cpm"]
    else:
        assert b["loss_ssc"] == a["loss_ssc"] and b["loss_cpm"] != a["loss_cpm"], (a, b)


def test_ssc_size_switch(caches):
    cfg = tc.resolve_cfg({"augment": SMALL_AUG, "cpm": {"enabled": False}})
    batch = _loss_batch(caches, cfg)
    model = tiny_model()
    a = objective.compute_losses(model, batch, cfg, None, False)
    b = objective.compute_losses(model, batch, cfg | {"ssc": cfg["ssc"] | {"size": 32}}, None, False)
    c = objective.compute_losses(model, batch, cfg | {"ssc": cfg["ssc"] | {"size": 64}}, None, False)  # = the crop
    assert a["loss_cls"] == b["loss_cls"] and a["loss_ssc"] != b["loss_ssc"] and a["loss_ssc"] == c["loss_ssc"]
    assert abs(a["loss_ssc"].item() - b["loss_ssc"].item()) < 0.2 * a["loss_ssc"].item()


def test_multiscale_prompt_cam_is_used(caches, fake_sam):
    cfg = tc.resolve_cfg({"augment": SMALL_AUG, "cpm": {"min_distance": 3, "threshold": 0.3}})
    batch = _loss_batch(caches, cfg)
    model = tiny_model()
    with torch.no_grad():
        model.classifier.weight.abs_()
    a = objective.compute_losses(model, batch, cfg | {"cpm": cfg["cpm"] | {"prompt_cam": "step"}}, None, True)
    b = objective.compute_losses(model, batch, cfg, None, True)  # the default: multiscale
    assert a["loss_cls"] == b["loss_cls"] and a["loss_cpm"] != b["loss_cpm"]
    assert model.training


def test_prompt_batch_auto_explicit_and_bad(caches, fake_sam):
    cpm = tc.resolve_cfg({})["cpm"]
    assert cpm["prompt_batch"] is None
    assert objective.prompt_batch(cpm, torch.device("cpu")) == 1 and objective.prompt_batch(cpm, torch.device("cuda")) is None
    assert objective.prompt_batch({**cpm, "prompt_batch": 8}, torch.device("cpu")) == 8
    for bad in ("x", 0, 2.5, True):
        with pytest.raises(S2CError, match="prompt_batch"):
            tc.resolve_cfg({"cpm": {"prompt_batch": bad}})
    # the slices give the same CPM loss as one forward of the whole batch (eval mode: images independent)
    cfg = tc.resolve_cfg({"augment": SMALL_AUG, "cpm": {"min_distance": 3, "threshold": 0.3}})
    batch = _loss_batch(caches, cfg)
    model = tiny_model()
    with torch.no_grad():
        model.classifier.weight.abs_()
    a = objective.compute_losses(model, batch, cfg | {"cpm": cfg["cpm"] | {"prompt_batch": 1}}, None, True)
    b = objective.compute_losses(model, batch, cfg | {"cpm": cfg["cpm"] | {"prompt_batch": 64}}, None, True)
    assert torch.allclose(a["loss_cpm"], b["loss_cpm"], rtol=1e-4) and a["loss_cpm"] > 0  # batched convs: rounding


# ------------------------------------------------------------------------------------ training runs
def _cfg(**kw):
    base = {"epochs": 2, "batch_size": 4, "num_workers": 0, "augment": SMALL_AUG,
            "cpm": {"start_epoch": 1, "min_distance": 4, "threshold": 0.3}}
    base.update(kw)
    return base


def _run(caches, out, **kw):
    return tc.train_cam(caches["data"], "train", out, caches["dir"] / "w", kw.pop("cfg", _cfg()),
                        {"model_type": "vit_test"}, caches["embed"], caches["se"], "cpu", progress=False,
                        model=tiny_model(), **kw)


def _csv(p):
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_cpm_start_step_fraction_and_epoch():
    cpm = tc.resolve_cfg({})["cpm"]
    assert objective.cpm_start_step(cpm, steps_per_epoch=27, total_steps=135) == 54  # start_epoch 2 (reference)
    assert objective.cpm_start_step({**cpm, "start_step": 500}, 27, 135) == 500
    assert objective.cpm_start_step({**cpm, "start_fraction": 1 / 6}, 1322, 7932) == 1322
    assert objective.cpm_start_step({**cpm, "start_fraction": 0.5}, 10, 101) == 51
    assert tc.resolve_cfg({"cpm": {"start_step": "40"}})["cpm"]["start_step"] == 40  # --config strings
    with pytest.raises(S2CError, match="both set"):
        tc.resolve_cfg({"cpm": {"start_step": 3, "start_fraction": 0.2}})
    with pytest.raises(S2CError, match="start_fraction"):
        tc.resolve_cfg({"cpm": {"start_fraction": 1.5}})
    with pytest.raises(S2CError, match="start_step"):
        tc.resolve_cfg({"cpm": {"start_step": -1}})


def test_cpm_switches_on_at_start_step_mid_epoch(caches, tmp_path, fake_sam):
    """start_step counts optimizer steps: with 2 steps per epoch, step 3 is mid-epoch 1."""
    _run(caches, tmp_path / "s", cfg=_cfg(epochs=3, cpm={"start_step": 3, "min_distance": 4, "threshold": 0.3}))
    rows = _csv(tmp_path / "s" / "losses.csv")
    assert [float(r["loss_cpm"]) > 0 for r in rows] == [False, False, False, True, True, True]


def test_cpm_diagnostics_rows_per_epoch(caches, tmp_path, fake_sam):
    _run(caches, tmp_path / "d", cfg=_cfg(epochs=2, diagnostics={"n_images": 3}))
    rows = _csv(tmp_path / "d" / "cpm_diag.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["step"]) for r in rows] == [2, 4]
    for r in rows:
        assert int(r["n_images"]) == 3 and int(r["n_peaks"]) >= 3
        for k in ("peak_hit_rate", "peak_chance", "pseudo_miou", "prompt_cam_miou"):
            assert 0 <= float(r[k]) <= 100, (k, r)
    assert (tmp_path / "d" / "cpm_diag.png").stat().st_size > 1000
    # the baseline has no CPM, hence no diagnostics file
    _run(caches, tmp_path / "b", cfg=_cfg(epochs=1, ablation="baseline"))
    assert not (tmp_path / "b" / "cpm_diag.csv").exists()


def test_peak_hits_counts_points_on_their_class():
    from s2c.cpm_diagnostics import peak_hits

    gt = np.zeros((10, 10), np.uint8)
    gt[:5] = 3  # class 2 fills the top half
    gt[9, 9] = 255
    pts = torch.tensor([[2.0, 1.0], [2.0, 8.0]])  # (x, y): one on the class, one below it
    hits, n, chance = peak_hits([(2, pts)], gt)
    assert (hits, n) == (1, 2) and chance == pytest.approx(2 * 50 / 99)


def test_same_config_twice_is_bit_identical(caches, tmp_path, fake_sam):
    """Determinism on CPU: S2C (SSC + cached CPM) twice with one seed → the same weights and logs;
    another seed differs."""
    cfg = _cfg(epochs=2, diagnostics={"n_images": 2})
    a, b = _run(caches, tmp_path / "a", cfg=cfg), _run(caches, tmp_path / "b", cfg=cfg)
    ma, mb = torch.load(a, weights_only=False)["model"], torch.load(b, weights_only=False)["model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "step_time"} for r in rows]  # noqa: E731
    assert strip(_csv(tmp_path / "a" / "losses.csv")) == strip(_csv(tmp_path / "b" / "losses.csv"))
    assert _csv(tmp_path / "a" / "cpm_diag.csv") == _csv(tmp_path / "b" / "cpm_diag.csv")
    c = _run(caches, tmp_path / "c", cfg={**cfg, "seed": 1})
    mc = torch.load(c, weights_only=False)["model"]
    assert any(not torch.equal(ma[k], mc[k]) for k in ma)


def test_channels_last_trains_the_same_model(caches, tmp_path, fake_sam):
    """cam.channels_last changes the memory layout only: the trained weights and losses agree with
    the default layout to float rounding, and model.pt loads into a default-layout model."""
    cfg = _cfg(epochs=1, diagnostics={"enabled": False})
    a = _run(caches, tmp_path / "a", cfg=cfg)
    b = _run(caches, tmp_path / "b", cfg={**cfg, "channels_last": True})
    ma, mb = torch.load(a, weights_only=False)["model"], torch.load(b, weights_only=False)["model"]
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], atol=1e-5, rtol=1e-4)
    la, lb = _csv(tmp_path / "a" / "losses.csv"), _csv(tmp_path / "b" / "losses.csv")
    assert [float(r["loss"]) for r in la] == pytest.approx([float(r["loss"]) for r in lb], rel=1e-4)
    m = tiny_model()
    m.load_state_dict(mb)


def test_micro_batches_slices_and_shares():
    from s2c.train_utils import micro_batches

    batch = {"labels": torch.zeros(5, 3), "image": torch.arange(5.0), "id": list("abcde")}
    assert micro_batches(batch, None) == [(batch, 1.0)] and micro_batches(batch, 8) == [(batch, 1.0)]
    parts = micro_batches(batch, 2)
    assert [p["id"] for p, _ in parts] == [["a", "b"], ["c", "d"], ["e"]]
    assert [s for _, s in parts] == [0.4, 0.4, 0.2] and torch.equal(parts[2][0]["image"], torch.tensor([4.0]))


def test_micro_batch_accumulates_the_whole_batch_gradient(caches, tmp_path, fake_sam, monkeypatch):
    """With L_CLS alone (a mean over images) and a model without randomness, accumulating over
    slices of 1 or 3 images trains the same weights as whole batches of 4; S2C runs and logs too."""
    sizes, losses = [], objective.compute_losses

    def spy(model, batch, *a, **kw):
        sizes.append(len(batch["labels"]))
        return losses(model, batch, *a, **kw)

    monkeypatch.setattr(tc, "compute_losses", spy)
    cfg = _cfg(epochs=1, ablation="baseline", diagnostics={"enabled": False})
    a = _run(caches, tmp_path / "a", cfg=cfg)
    ma = torch.load(a, weights_only=False)["model"]
    assert set(sizes) == {4}
    for size in (1, 3):
        sizes.clear()
        b = _run(caches, tmp_path / f"b{size}", cfg={**cfg, "micro_batch": size})
        assert set(sizes) == ({1} if size == 1 else {3, 1})
        mb = torch.load(b, weights_only=False)["model"]
        for k in ma:
            torch.testing.assert_close(ma[k], mb[k], atol=1e-6, rtol=1e-5)
        la, lb = _csv(tmp_path / "a" / "losses.csv"), _csv(tmp_path / f"b{size}" / "losses.csv")
        assert [float(r["loss_cls"]) for r in la] == pytest.approx([float(r["loss_cls"]) for r in lb], rel=1e-5)
    assert any(not torch.equal(ma[k], tiny_model().state_dict()[k]) for k in ma)  # it did train
    c = _run(caches, tmp_path / "c", cfg=_cfg(epochs=2, micro_batch=2, cpm={"start_epoch": 0, "min_distance": 4,
                                                                          "threshold": 0.3}))
    rows = _csv(tmp_path / "c" / "losses.csv")
    assert all(float(r["loss_cpm"]) > 0 and float(r["loss_ssc"]) > 0 for r in rows)
    with pytest.raises(S2CError, match="micro_batch"):
        tc.resolve_cfg({"micro_batch": 0})


def test_cpm_diag_png_always_exists_and_says_why_when_off(caches, tmp_path, fake_sam):
    """The report's diagnostics entry: a plot with L_CPM, a note without it (no csv then)."""
    _run(caches, tmp_path / "base", cfg=_cfg(epochs=1, ablation="baseline"))
    assert (tmp_path / "base" / "cpm_diag.png").stat().st_size > 0
    assert not (tmp_path / "base" / "cpm_diag.csv").exists()
    _run(caches, tmp_path / "s2c", cfg=_cfg(epochs=1, cpm={"start_epoch": 0, "min_distance": 4},
                                           diagnostics={"n_images": 2}))
    assert (tmp_path / "s2c" / "cpm_diag.png").stat().st_size > 0 and (tmp_path / "s2c" / "cpm_diag.csv").is_file()


def test_init_starts_from_a_warmup_checkpoint(caches, tmp_path):
    """cam.init loads another run's model.pt before training (the shared warm-up of the ablations):
    at a vanishing LR the run ends where the warm-up ended, not at the fresh model's weights."""
    warm = _run(caches, tmp_path / "warm", cfg=_cfg(epochs=1, ablation="baseline"))
    w = torch.load(warm, weights_only=True)["model"]
    fresh = tiny_model().state_dict()
    assert any(not torch.allclose(w[k].float(), fresh[k].float()) for k in w)
    run = _run(caches, tmp_path / "ft", cfg=_cfg(epochs=1, ablation="baseline", init=str(warm), lr=1e-12))
    ft = torch.load(run, weights_only=True)
    assert all(torch.allclose(ft["model"][k].float(), w[k].float(), atol=1e-8) for k in w)
    assert ft["cam_cfg"]["init"] == str(warm)


def test_init_from_another_model_is_a_clear_error(caches, tmp_path):
    cfg = tc.resolve_cfg({})
    bad = tmp_path / "other.pt"
    torch.save({"model": {}, "cam_cfg": {**cfg, "feat_dim": 16}, "num_classes": 20, "class_set": "voc20"}, bad)
    with pytest.raises(S2CError, match=r"other\.pt.*feat_dim: 16 there"):
        cam_training.init_from(tiny_model(), {**cfg, "init": str(bad)}, 20, "voc20")
    torch.save({"model": {}, "cam_cfg": cfg, "num_classes": 80, "class_set": "coco80"}, bad)
    with pytest.raises(S2CError, match="num_classes: 80 there, 20 here; class_set: 'coco80' there"):
        cam_training.init_from(tiny_model(), {**cfg, "init": str(bad)}, 20, "voc20")
    with pytest.raises(S2CError, match="not found"):
        cam_training.init_from(tiny_model(), {**cfg, "init": str(tmp_path / "none.pt")}, 20, "voc20")
    with pytest.raises(S2CError, match="cam.init must be"):
        tc.resolve_cfg({"init": 5})


def test_lr_mult_new_defaults_to_the_reference_1x():
    assert tc.resolve_cfg({})["lr_mult_new"] == 1.0


def test_train_writes_outputs_and_resumes_after_a_kill(caches, tmp_path, monkeypatch, fake_sam):
    full = _run(caches, tmp_path / "a")
    assert full == tmp_path / "a" / "model.pt"
    m = torch.load(full, weights_only=False)
    assert set(m) == {"model", "cam_cfg", "num_classes", "class_set", "input_norm"} and m["num_classes"] == 20
    assert m["class_set"] == "voc20" and m["cam_cfg"]["cpm"]["start_epoch"] == 1
    rows = _csv(tmp_path / "a" / "losses.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[0]["loss_cpm"]) == 0 and float(rows[2]["loss_cpm"]) > 0  # CPM from epoch 1
    assert (tmp_path / "a" / "losses.png").stat().st_size > 1000

    # "kill" the second run in the middle of epoch 2 (after one more logged step)
    real = objective.compute_losses
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(tc, "compute_losses", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(caches, tmp_path / "b")
    monkeypatch.setattr(tc, "compute_losses", real)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "b" / "model.pt").exists()
    assert len(_csv(tmp_path / "b" / "losses.csv")) == 3
    resumed = _run(caches, tmp_path / "b")
    assert [int(r["step"]) for r in _csv(tmp_path / "b" / "losses.csv")] == [1, 2, 3, 4]
    mb = torch.load(resumed, weights_only=False)["model"]
    for k, v in m["model"].items():
        assert torch.equal(v, mb[k]), k  # bit-exact: same crops, optimizer state and RNG streams
    # rerunning over a finished run trains it again (a forced rerun, snakemake -R); bit-identical here.
    # A changed config trains from scratch too (all steps logged anew)
    assert _run(caches, tmp_path / "b") == resumed
    again = torch.load(resumed, weights_only=False)["model"]
    assert all(torch.equal(v, again[k]) for k, v in m["model"].items())
    _run(caches, tmp_path / "b", cfg=_cfg(lr=0.5))
    assert [int(r["step"]) for r in _csv(tmp_path / "b" / "losses.csv")] == [1, 2, 3, 4]
    mc = torch.load(tmp_path / "b" / "model.pt", weights_only=False)
    assert mc["cam_cfg"]["lr"] == 0.5
    assert any(not torch.equal(v, mc["model"][k]) for k, v in m["model"].items())


def test_train_online_mode_needs_no_embedding_cache(caches, tmp_path, fake_sam):
    out = tc.train_cam(caches["data"], "train", tmp_path, caches["dir"] / "w",
                       _cfg(epochs=1, sam_mode="online", cpm={"start_epoch": 0, "min_distance": 4}),
                       {"model_type": "vit_test"}, None, caches["se"], "cpu", progress=False, model=tiny_model())
    rows = _csv(tmp_path / "losses.csv")
    assert out.exists() and all(float(r["loss_cpm"]) > 0 for r in rows)


def test_missing_cache_is_a_clear_error(caches, tmp_path):
    with pytest.raises(S2CError, match="--se-manifest"):
        tc.train_cam(caches["data"], "train", tmp_path, caches["dir"] / "w", _cfg(), {"model_type": "vit_test"},
                     caches["embed"], None, "cpu", progress=False, model=tiny_model())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, caches_dir, data_cfg, out, embed, se):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    model = tiny_model()
    tc.train_cam(data_cfg, "train", out, Path(caches_dir) / "w", _cfg(batch_size=2, epochs=2),
                 {"model_type": "vit_test"}, embed, se, "cpu", progress=False, model=model)
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")


def test_ddp_two_gloo_processes(caches, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(caches["dir"]), caches["data"], str(tmp_path),
                                str(caches["embed"]), str(caches["se"])), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # gradients were averaged: replicas stay identical
    assert not torch.equal(r0["classifier.weight"], tiny_model().state_dict()["classifier.weight"])
    # 8 images / (2 processes × batch 2) = 2 steps per epoch, logged once by rank 0
    assert [int(r["step"]) for r in _csv(tmp_path / "losses.csv")] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "model.pt", weights_only=False)["num_classes"] == 20


def test_cli_baseline_with_real_classifier(synthetic_voc, tmp_path):
    """The CLI end to end with build_classifier (EfficientNet-Lite0), baseline ablation (no caches);
    model.pt loads back through build_classifier as infer_cam does."""
    import json

    from s2c.models import build_classifier

    dcfg = json.dumps({"kind": "voc", "root": str(synthetic_voc), "cache_dir": str(tmp_path / "dc")})
    cfg = json.dumps({"backbone": "efficientnet_lite0", "output_stride": 16, "epochs": 1, "batch_size": 4,
                      "num_workers": 0, "ablation": "baseline", "augment": {"crop_size": 48, "resize_long": [48, 64]}})
    assert tc.main(["--data-cfg", dcfg, "--split", "train", "--out", str(tmp_path / "o"), "--weights-dir",
                    str(Path(__file__).resolve().parents[1] / "weights"), "--cfg", cfg, "--device", "cpu",
                    "--no-progress"]) == 0
    m = torch.load(tmp_path / "o" / "model.pt", weights_only=False)
    net = build_classifier(m["cam_cfg"] | {"pretrained": False}, m["num_classes"], None)
    net.load_state_dict(m["model"])
    with pytest.raises(SystemExit) as e:
        tc.main(["--data-cfg", dcfg, "--split", "train", "--out", str(tmp_path / "o2"), "--cfg", '{"cpm": {"x": 1}}'])
    assert e.value.code == 2


# ------------------------------------------------------------------------------------ real data
def test_cached_and_online_agree_on_coco_mini(coco_mini_root, tmp_path):
    """Augmentation off, crop = whole image: class masks from the cached embedding (decoder only)
    and from encoding the crop online agree (IoU ≥ 0.9) with MobileSAM on real images."""
    from s2c.sam.prompt import encode_image
    from s2c.weights import ensure_mobile_sam  # noqa: F401  (provisioned by load_sam)

    weights = Path(__file__).resolve().parents[1] / "weights"
    sam, _ = cam_training.load_sam_for_training({"model_type": "vit_t"}, weights, "cpu")
    ds = open_dataset({"kind": "coco", "root": str(coco_mini_root), "class_set": "voc20",
                       "cache_dir": str(tmp_path / "dc")}, "val")
    cpm = tc.resolve_cfg({})["cpm"]
    data = CAMTrainDataset(ds, {"augment": False, "crop_size": 640})
    ious = []
    for i in range(4):
        it = data[i]
        image = ds.load_image(it["id"])
        emb, inp = encode_image(sam, image)
        b = collate([it])
        b["embedding"] = emb[None].half()
        b["orig_size"] = torch.tensor([image.shape[:2]])
        b["input_size"] = torch.tensor([inp])
        # a CAM-like prompt map from the GT: each present class peaks inside its largest region
        gt = torch.from_numpy(Geometry.from_dict(it["geometry"]).warp_to_crop(ds.load_mask(it["id"]), "nearest", 0))
        cam = torch.stack([F.avg_pool2d((gt == c + 1).float()[None, None], 31, 1, 15)[0, 0] for c in range(20)])[None]
        cam = cam / cam.amax((2, 3), keepdim=True).clamp_min(1e-6)
        cached = objective.cpm_targets(sam, b, cam, cpm, "cached")[0]
        online = objective.cpm_targets(sam, b, cam, cpm, "online")[0]
        for c in torch.unique(cached).tolist():
            if c in (0, 255):
                continue
            a, o = cached == c, online == c
            ious.append(((a & o).sum() / (a | o).sum()).item())
    print(f"cached vs online class-mask IoU: mean {np.mean(ious):.3f} min {np.min(ious):.3f} over {len(ious)} masks")
    assert ious and np.mean(ious) >= 0.9, ious


def test_on_epoch_end_stops_after_a_checkpoint_and_a_nan_loss_stops_training(caches, tmp_path, monkeypatch, fake_sam):
    """The trainers' shared hook and checks (s2c.train_utils.TrainingRun): a true on_epoch_end ends
    the run after that epoch's checkpoint (no model.pt); a non-finite loss is an S2CError."""
    seen = []
    assert _run(caches, tmp_path / "a", on_epoch_end=lambda ep, info: seen.append((ep, info)) or True) is None
    assert [ep for ep, _ in seen] == [1] and seen[0][1]["step"] == 2 and np.isfinite(seen[0][1]["loss"])
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "a" / "model.pt").exists()
    assert [int(r["epoch"]) for r in _csv(tmp_path / "a" / "losses.csv")] == [1, 1]

    real = objective.compute_losses

    def nan_loss(*a, **k):
        parts = real(*a, **k)
        return {**parts, "loss": parts["loss"] * float("nan")}

    monkeypatch.setattr(tc, "compute_losses", nan_loss)
    with pytest.raises(S2CError, match="train_cam: loss became nan"):
        _run(caches, tmp_path / "b")


# ------------------------------------------------------------------------------------ oracle / IoU filter
def test_gt_instance_points_lie_inside_the_largest_components():
    from s2c.losses.oracle import gt_instance_points

    gt = np.zeros((40, 60), np.int64)
    gt[2:12, 2:30] = 3          # class 2: a bar
    gt[20:38, 40:58] = 3        # class 2: a square, the largest component
    gt[30:33, 5:8] = 5          # class 4: a small blob
    gt[0:5, 50:60] = 255        # ignore
    pts = gt_instance_points(gt, [2, 4, 7], max_points=5)
    assert [c for c, _ in pts] == [2, 4]  # class 7 is labelled but not in the crop: no prompt
    (c2, p2), (c4, p4) = pts
    assert p2.shape == (2, 2) and p4.shape == (1, 2)
    for c, p in pts:
        for x, y in p:
            assert gt[int(y), int(x)] == c + 1  # every point on its own class
    assert abs(p2[0][0] - 49) <= 1 and abs(p2[0][1] - 29) <= 1  # the square (largest) first, at its centre
    assert len(gt_instance_points(gt, [2], max_points=1)[0][1]) == 1


def test_oracle_ablation_prompts_from_gt_and_needs_masks(caches, fake_sam, monkeypatch):
    cfg = tc.resolve_cfg({"augment": SMALL_AUG, "ablation": "cpm_oracle", "cpm": {"min_distance": 3, "threshold": 0.3}})
    assert cfg["cpm"]["prompts"] == "oracle" and not cfg["ssc"]["enabled"]
    data = CAMTrainDataset(caches["ds"], cfg["augment"], EmbeddingReader(caches["embed"]), None, 0, gt_masks=True)
    batch = collate([data[i] for i in range(4)])
    assert batch["gt"].shape == batch["valid"].shape and batch["gt"].dtype == torch.long
    peaks = objective.cpm_peaks(torch.zeros(4, 20, *batch["gt"].shape[-2:]), batch, cfg["cpm"])
    for b, per in enumerate(peaks):
        for c, pts in per:
            assert batch["labels"][b, c] == 1
            assert all(batch["gt"][b, int(y), int(x)] == c + 1 for x, y in pts.tolist())
    torch.manual_seed(0)
    model = tiny_model()
    out = objective.compute_losses(model, batch, cfg, None, True)
    assert out["loss_cpm"] > 0 and out["loss_ssc"] == 0
    # a split without GT masks: a clear error at dataset build, not a silent all-background target
    monkeypatch.setattr(type(caches["ds"]), "load_mask", lambda self, i: None)
    with pytest.raises(S2CError, match="oracle needs GT masks"):
        cam_training.build_dataset(caches["data"], "train", cfg, caches["embed"], caches["se"])


def test_min_pred_iou_drops_the_masks_sam_rates_low(caches, monkeypatch):
    import s2c.sam.prompt as sp

    def decode(*a, **kw):
        logits, _ = fake_decode(*a, **kw)
        return logits, torch.linspace(0.5, 1.0, len(logits))  # the last class's mask is rated best

    monkeypatch.setattr(sp, "decode_prompts", decode)
    monkeypatch.setattr(sp, "encode_images", fake_encode)
    geo = Geometry.identity((40, 60))
    labels = torch.zeros(1, 3)
    labels[0, [0, 2]] = 1
    cam = _blob_cam(3, 40, 60, {0: [(10, 10, 1.0)], 2: [(45, 25, 1.0)]})
    base = tc.resolve_cfg({"cpm": {"min_distance": 3}})["cpm"]
    keep_all = objective.cpm_targets(None, _batch_for(geo, labels), cam, base, "cached")
    assert set(keep_all.unique().tolist()) == {0, 1, 3}
    strict = objective.cpm_targets(None, _batch_for(geo, labels), cam, {**base, "min_pred_iou": 0.9}, "cached")
    assert set(strict.unique().tolist()) == {0, 3}  # class 0's mask (IoU 0.5) dropped: its pixels background
    with pytest.raises(S2CError, match="min_pred_iou"):
        tc.resolve_cfg({"cpm": {"min_pred_iou": 1.5}})


def test_module_doc_documents_every_cam_key_and_states_no_default():
    """The train_cam docstring explains each key of the cam section once; the values live only in
    s2c.sections.TRAIN_DEFAULTS (a docstring that restated them went stale)."""
    import re

    from s2c.sections import TRAIN_DEFAULTS

    def flat(d, p=""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "augment":
                yield from flat(v, p + k + ".")
            else:
                yield p + k

    doc = tc.__doc__
    table = doc[doc.index("key                       meaning"):doc.index("``--sam-cfg``")]
    keys = [m.group(1) for m in re.finditer(r"^([a-z_]+(?:\.[a-z_]+)?)\s{2,}\S", table, re.M) if m.group(1) != "key"]
    assert sorted(keys) == sorted(flat(TRAIN_DEFAULTS))
