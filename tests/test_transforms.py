"""Augmentation geometry: point maps, raster warps (numpy/torch), TrainAugment, normalisation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s2c.data.transforms import (
    IMAGE_PAD_FILL,
    Geometry,
    TrainAugment,
    denormalize,
    long_side_size,
    normalize,
    random_crop_offset,
)
from s2c.errors import S2CError

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def geometries(draw, min_scale: float = 0.3, max_scale: float = 3.0):
    """Random Geometry: any per-axis scale in [min_scale, max_scale], flip, crops that may hang
    over any side of the resized image (padding) or sit inside it."""
    h, w = draw(st.integers(3, 40)), draw(st.integers(3, 40))
    sy, sx = draw(st.floats(min_scale, max_scale)), draw(st.floats(min_scale, max_scale))
    rh, rw = max(1, round(h * sy)), max(1, round(w * sx))
    ch, cw = draw(st.integers(2, 48)), draw(st.integers(2, 48))
    oy = draw(st.integers(-ch + 1, rh - 1))
    ox = draw(st.integers(-cw + 1, rw - 1))
    return Geometry((h, w), (rh, rw), draw(st.booleans()), (oy, ox), (ch, cw))


@SETTINGS
@given(geometries(), st.lists(st.tuples(st.floats(-20, 80), st.floats(-20, 80)), min_size=1, max_size=8))
def test_points_round_trip(geo, pts):
    p = np.array(pts, dtype=np.float64)
    np.testing.assert_allclose(geo.points_to_orig(geo.points_to_crop(p)), p, atol=1e-9)
    np.testing.assert_allclose(geo.points_to_crop(geo.points_to_orig(p)), p, atol=1e-9)


def test_points_known_values():
    # 10x20 image → 20x40 (scale 2), flipped, crop offset (oy, ox) = (3, 5).
    geo = Geometry((10, 20), (20, 40), True, (3, 5), (8, 8))
    # x: 1.5*2 = 3 → flip 40-3 = 37 → -5 = 32; y: 2.5*2 = 5 → -3 = 2.
    np.testing.assert_allclose(geo.points_to_crop([[1.5, 2.5]]), [[32.0, 2.0]])
    assert geo.scale == (2.0, 2.0)


def _interior(label: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood (border replicated) holds one label."""
    k = np.ones((3, 3), np.uint8)
    return cv2.dilate(label, k, borderType=cv2.BORDER_REPLICATE) == cv2.erode(label, k, borderType=cv2.BORDER_REPLICATE)


@SETTINGS
@given(geometries(), st.integers(0, 2**31 - 1))
def test_mask_warp_matches_warped_image(geo, seed):
    """Paint a label map into an image; warp the image (bilinear) and the map (nearest) with one
    Geometry: inside regions the image colour is the colour of the warped label."""
    rng = np.random.default_rng(seed)
    h, w = geo.orig_size
    cell = int(rng.integers(3, 8))
    blocks = rng.integers(0, 6, size=(h // cell + 1, w // cell + 1)).astype(np.uint8)
    label = np.kron(blocks, np.ones((cell, cell), np.uint8))[:h, :w]
    lut = rng.integers(0, 256, size=(6, 3)).astype(np.uint8)
    image = lut[label]

    img_c = geo.warp_to_crop(image, "bilinear", fill=IMAGE_PAD_FILL)
    lab_c = geo.warp_to_crop(label, "nearest", fill=255)
    inner_c = geo.warp_to_crop(_interior(label), "nearest", fill=False)
    valid = geo.valid_mask()

    assert img_c.shape == geo.crop_size + (3,) and lab_c.shape == geo.crop_size
    assert (lab_c[~valid] == 255).all()
    assert (img_c[~valid] == np.array(IMAGE_PAD_FILL, np.uint8)).all()
    assert set(np.unique(lab_c[valid]).tolist()) <= set(np.unique(label).tolist())
    sel = valid & inner_c
    diff = np.abs(img_c[sel].astype(int) - lut[lab_c[sel]].astype(int))
    assert diff.max(initial=0) <= 1


@SETTINGS
@given(geometries(), st.integers(0, 2**31 - 1), st.sampled_from(["nearest", "bilinear"]), st.floats(-5, 5))
def test_torch_and_numpy_warps_agree(geo, seed, mode, fill):
    a = np.random.default_rng(seed).normal(size=(2,) + geo.orig_size).astype(np.float32)
    want = np.stack([geo.warp_to_crop(x, mode, fill=fill) for x in a])
    got = geo.warp_to_crop_torch(torch.from_numpy(a), mode, fill=fill).numpy()
    assert got.shape == (2,) + geo.crop_size
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@SETTINGS
@given(geometries())
def test_pixel_centre_lands_on_its_own_value(geo):
    """The crop pixel containing points_to_crop(pixel centre) holds that pixel's value (exactly
    when upscaling; a pixel at most ~1/scale away when downscaling)."""
    h, w = geo.orig_size
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    crop = geo.warp_to_crop(ids, "nearest", fill=-1)
    ii, jj = np.mgrid[0:h, 0:w]
    centres = np.stack([jj.ravel() + 0.5, ii.ravel() + 0.5], axis=1)
    pc = np.floor(geo.points_to_crop(centres)).astype(int)
    ch, cw = geo.crop_size
    inside = (pc[:, 0] >= 0) & (pc[:, 0] < cw) & (pc[:, 1] >= 0) & (pc[:, 1] < ch)
    read = crop[pc[inside, 1], pc[inside, 0]]
    assert (read >= 0).all()  # never reads padding
    ri, rj = np.divmod(read, w)
    sy, sx = geo.scale
    ti, tj = ii.ravel()[inside], jj.ravel()[inside]
    if sy >= 1:
        assert (ri == ti).all()
    else:
        assert (np.abs(ri - ti) <= 1 / sy + 1).all()
    if sx >= 1:
        assert (rj == tj).all()
    else:
        assert (np.abs(rj - tj) <= 1 / sx + 1).all()


@SETTINGS
@given(geometries())
def test_valid_mask_counts_overlap(geo):
    (rh, rw), (ch, cw), (oy, ox) = geo.resized_size, geo.crop_size, geo.crop_offset
    ny = max(0, min(rh, oy + ch) - max(0, oy))
    nx = max(0, min(rw, ox + cw) - max(0, ox))
    assert geo.valid_mask().sum() == ny * nx


def test_identity_geometry_is_a_no_op():
    a = np.random.default_rng(0).integers(0, 255, size=(7, 9, 3)).astype(np.uint8)
    geo = Geometry.identity((7, 9))
    assert (geo.warp_to_crop(a, "nearest") == a).all()
    assert (geo.warp_to_crop(a, "bilinear") == a).all()
    assert geo.valid_mask().all()
    p = np.array([[0.0, 0.0], [8.9, 6.5]])
    np.testing.assert_array_equal(geo.points_to_crop(p), p)
    assert Geometry.from_dict(geo.to_dict()) == geo


def test_flip_reverses_columns():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    geo = Geometry((3, 4), (3, 4), True, (0, 0), (3, 4))
    assert (geo.warp_to_crop(a, "nearest") == a[:, ::-1]).all()
    assert (geo.warp_to_crop(a, "bilinear") == a[:, ::-1]).all()


def test_many_channels_and_bad_shapes():
    a = np.random.default_rng(1).random((6, 5, 600)).astype(np.float32)  # > cv2's per-call channel limit
    geo = Geometry((6, 5), (12, 9), False, (-1, 2), (8, 8))
    out = geo.warp_to_crop(a, "bilinear")
    assert out.shape == (8, 8, 600)
    np.testing.assert_allclose(out[..., 550], geo.warp_to_crop(a[..., 550], "bilinear"), atol=1e-6)
    with pytest.raises(S2CError, match="spatial size"):
        geo.warp_to_crop(np.zeros((5, 6)), "nearest")
    with pytest.raises(S2CError, match="interpolation"):
        geo.warp_to_crop(np.zeros((6, 5)), "cubic")
    with pytest.raises(S2CError):
        geo.warp_to_crop_torch(torch.zeros(6, 5), "bilinear")


def test_random_crop_offset_matches_reference_ranges():
    rng = np.random.default_rng(0)
    inside = {random_crop_offset(300, 256, rng) for _ in range(2000)}
    assert inside == set(range(0, 45))
    padded = {random_crop_offset(200, 256, rng) for _ in range(2000)}
    assert padded == set(range(-56, 1))
    assert {random_crop_offset(256, 256, rng) for _ in range(20)} == {0}


def test_long_side_size():
    assert long_side_size((375, 500), 256) == (192, 256)
    assert long_side_size((500, 375), 512) == (512, 384)
    assert long_side_size((1, 1000), 100) == (1, 100)


def _image(h=90, w=120, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3)).astype(np.uint8)


def test_train_augment_is_deterministic_and_in_range():
    aug = TrainAugment({"resize_long": [100, 160], "crop_size": 64})
    img = _image()
    c1, g1 = aug(img, np.random.default_rng(5))
    c2, g2 = aug(img, np.random.default_rng(5))
    assert g1 == g2 and (c1 == c2).all()
    assert c1.shape == (64, 64, 3) and c1.dtype == np.uint8
    flips, longs = set(), set()
    for s in range(40):
        c, g = aug(img, np.random.default_rng(s))
        assert 100 <= max(g.resized_size) <= 160 and g.orig_size == (90, 120)
        assert (c[~g.valid_mask()] == np.array(IMAGE_PAD_FILL, np.uint8)).all()
        flips.add(g.flip)
        longs.add(max(g.resized_size))
    assert flips == {True, False} and len(longs) > 10


def test_train_augment_image_follows_its_geometry():
    """Without photometric jitter the crop is exactly warp_to_crop of the image."""
    aug = TrainAugment({"resize_long": [60, 200], "crop_size": [48, 72], "color_jitter_p": 0.0, "grayscale_p": 0.0})
    img = _image()
    for s in range(10):
        c, g = aug(img, np.random.default_rng(s))
        assert (c == g.warp_to_crop(img, "bilinear", fill=IMAGE_PAD_FILL)).all()


def test_train_augment_photometric_changes_colours_only():
    aug = TrainAugment({"resize_long": [120, 120], "crop_size": 64, "flip": False, "color_jitter_p": 1.0, "grayscale_p": 1.0})
    img = _image()
    c, g = aug(img, np.random.default_rng(0))
    valid = g.valid_mask()
    assert (c[valid][:, 0] == c[valid][:, 1]).all()  # grayscale applied
    plain = g.warp_to_crop(img, "bilinear", fill=IMAGE_PAD_FILL)
    assert not (c == plain).all()


def test_train_augment_off_is_identity_plus_pad():
    aug = TrainAugment({"augment": False, "crop_size": 100})
    img = _image(90, 120)
    c, g = aug(img, np.random.default_rng(0))
    assert g == Geometry((90, 120), (90, 120), False, (0, 0), (100, 100))
    assert (c[:90, :100] == img[:, :100]).all()
    assert (c[90:] == np.array(IMAGE_PAD_FILL, np.uint8)).all()


def test_train_augment_rejects_bad_config():
    with pytest.raises(S2CError, match="unknown augmentation"):
        TrainAugment({"resize": 3})
    with pytest.raises(S2CError, match="resize_long"):
        TrainAugment({"resize_long": [300, 200]})


def test_normalize_round_trip_and_pad_is_zero():
    img = _image(5, 7)
    t = normalize(img)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert (denormalize(t) == img).all()
    assert (denormalize(t[None])[0] == img).all()
    pad = normalize(np.full((2, 2, 3), IMAGE_PAD_FILL, np.uint8))
    assert pad.abs().max() < 0.01
