"""Decoder-only prompting on cached embeddings, checked against SAM's own SamPredictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _sam_fixtures import mobile_sam, mobile_sam_checkpoint, sam_weights_dir, tiny_sam  # noqa: F401
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from s2c.sam.prompt import (
    decode_prompts,
    encode_image,
    encode_images,
    lowres_to_size,
    prepare_points,
    sam_input_size,
)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random colour blobs (not white noise, so SAM's decoder has structure to follow)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


@pytest.fixture(scope="module")
def encoded(tiny_sam):
    """A 90×150 image, its embedding via encode_image, and a SamPredictor set on the same image."""
    img = _image(90, 150, 0)
    emb, input_size = encode_image(tiny_sam, img)
    pred = SamPredictor(tiny_sam)
    pred.set_image(img)
    return img, emb, input_size, pred


POINTS = [  # mixed point counts, in original (x, y) pixels of the 90×150 image
    np.array([[10.0, 20.0]]),
    np.array([[140.0, 80.0], [75.0, 45.0], [3.0, 88.0]]),
    np.array([[60.0, 10.0]]),
    np.array([[100.0, 30.0], [120.0, 60.0]]),
]


def test_sam_input_size_matches_resize_longest_side():
    for h, w in [(90, 150), (480, 640), (640, 427), (1024, 1024), (1, 3000)]:
        assert sam_input_size((h, w)) == ResizeLongestSide(1024).get_preprocess_shape(h, w, 1024)
    assert sam_input_size((90, 150)) == (614, 1024)


def test_prepare_points_scales_xy_and_pads():
    coords, labels = prepare_points([np.array([[150.0, 90.0]]), np.array([[0.0, 0.0], [75.0, 45.0]])], (90, 150))
    assert coords.shape == (2, 2, 2) and labels.tolist() == [[1, -1], [1, 1]]
    # x scales with the width, y with the height: (150, 90) → (1024, 614).
    assert torch.allclose(coords[0, 0], torch.tensor([1024.0, 614.0]))
    assert torch.allclose(coords[1, 1], torch.tensor([512.0, 307.0]))


def test_encode_image_matches_sam_predictor(encoded):
    img, emb, input_size, pred = encoded
    assert emb.shape == (256, 64, 64) and emb.dtype == torch.float32
    assert input_size == pred.input_size == (614, 1024)
    assert torch.allclose(emb, pred.features[0], atol=1e-5)


def test_encode_images_batches_mixed_sizes(tiny_sam, encoded):
    img, emb, _, _ = encoded
    other = _image(120, 64, 1)
    batch = encode_images(tiny_sam, [img, other])
    assert batch.shape == (2, 256, 64, 64)
    assert torch.allclose(batch[0], emb, atol=1e-5)
    assert torch.allclose(batch[1], encode_image(tiny_sam, other)[0], atol=1e-5)


@pytest.fixture(scope="module")
def decoded(encoded, tiny_sam):
    """Shared decoder outputs (each decoder call costs ~0.3-1 s on a busy CPU)."""
    img, emb, input_size, pred = encoded
    args = (img.shape[:2], input_size)
    return {
        "pad": decode_prompts(tiny_sam, emb, POINTS, *args, "all", batching="pad"),
        "group": decode_prompts(tiny_sam, emb, POINTS, *args, "all", batching="group"),
        "predictor": [pred.predict(p, np.ones(len(p)), multimask_output=True, return_logits=True) for p in POINTS],
    }


@pytest.mark.parametrize("batching", ["pad", "group"])
def test_batched_prompts_equal_single_predictor_calls(decoded, batching):
    # Mixed point counts (1, 3, 1, 2): "pad" pads to 3 with masked −1 tokens, "group" makes 3 calls.
    logits, iou = decoded[batching]
    assert logits.shape == (len(POINTS), 3, 90, 150) and iou.shape == (len(POINTS), 3)
    for b, (masks, scores, _) in enumerate(decoded["predictor"]):
        np.testing.assert_allclose(logits[b].numpy(), masks, atol=1e-4)
        np.testing.assert_allclose(iou[b].numpy(), scores, atol=1e-5)


def test_unmasked_padding_would_change_results(encoded, decoded, tiny_sam):
    """Why the masking exists: SAM's own decoder attends to extra −1 tokens."""
    from s2c.sam.prompt import _decode, prepare_points

    img, emb, _, _ = encoded
    coords, labels = prepare_points(POINTS, img.shape[:2])
    low, _ = _decode(tiny_sam, emb[None], coords, labels)  # (B, 3, 256, 256), SAM's modules as-is
    exact_low, _ = decode_prompts(tiny_sam, emb, POINTS, img.shape[:2], (614, 1024), "all", return_lowres=True)
    assert torch.allclose(low[1], exact_low[1], atol=1e-4)  # the longest prompt has no extra padding
    assert not torch.allclose(low[0], exact_low[0], atol=1e-2)  # a 1-point prompt padded to 3


def test_best_index_picks_highest_predicted_iou(encoded, decoded, tiny_sam):
    img, emb, input_size, _ = encoded
    all_logits, all_iou = decoded["pad"]
    logits, iou = decode_prompts(tiny_sam, emb, POINTS, img.shape[:2], input_size, "best")
    assert torch.equal(iou, all_iou.max(1).values)
    for b, k in enumerate(all_iou.argmax(1).tolist()):
        assert torch.equal(logits[b], all_logits[b, k])


def test_index_two_lowres_then_upsample_equals_full_output(encoded, decoded, tiny_sam):
    img, emb, input_size, _ = encoded
    low, iou = decode_prompts(tiny_sam, emb, POINTS, img.shape[:2], input_size, 2, return_lowres=True)
    assert low.shape == (len(POINTS), 256, 256)
    assert torch.equal(iou, decoded["pad"][1][:, 2])
    assert torch.allclose(lowres_to_size(low, input_size, img.shape[:2]), decoded["pad"][0][:, 2], atol=1e-5)
    assert lowres_to_size(low, input_size, (45, 75)).shape == (len(POINTS), 45, 75)


def test_float16_cached_embedding_is_accepted(encoded, decoded, tiny_sam):
    img, emb, input_size, _ = encoded
    half, _ = decode_prompts(tiny_sam, emb.half(), POINTS, img.shape[:2], input_size, "all")
    ref = decoded["pad"][0]
    assert half.dtype == torch.float32
    assert ((half > 0) == (ref > 0)).float().mean() > 0.99
    assert (half - ref).abs().max() < 0.05 * ref.abs().max()


def test_bad_arguments(encoded, tiny_sam):
    img, emb, input_size, _ = encoded
    args = (img.shape[:2], input_size)
    with pytest.raises(ValueError, match="at least one prompt"):
        decode_prompts(tiny_sam, emb, [], *args)
    with pytest.raises(ValueError, match="at least one point"):
        decode_prompts(tiny_sam, emb, [np.zeros((0, 2))], *args)
    with pytest.raises(ValueError, match="multimask_index must be 0, 1, 2, 'best' or 'all'"):
        decode_prompts(tiny_sam, emb, POINTS, *args, multimask_index=3)
    with pytest.raises(ValueError, match="batching"):
        decode_prompts(tiny_sam, emb, POINTS, *args, batching="loop")
    with pytest.raises(ValueError, match="uint8 RGB"):
        encode_image(tiny_sam, img.astype(np.float32))


# Compact single objects (giraffe, pizza, zebra): one interior point is unambiguous for them,
# whereas stuff-like instances (dining table, couch) are not — that is SAM, not our code.
REAL_IMAGES = [57345, 92660, 104455]


def test_mobile_sam_one_point_recovers_real_instances(mobile_sam, coco_mini_root):
    from pycocotools.coco import COCO
    from scipy import ndimage

    from s2c.io import read_image

    coco = COCO(str(coco_mini_root / "annotations" / "instances_val.json"))
    missing = [i for i in REAL_IMAGES if i not in coco.imgs]
    if missing:
        pytest.skip(f"coco-mini lacks images {missing}")
    for iid in REAL_IMAGES:
        img = read_image(coco_mini_root / "val" / coco.imgs[iid]["file_name"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=iid, iscrowd=False))
        gt = coco.annToMask(max(anns, key=lambda a: a["area"])).astype(bool)
        # The most interior pixel: farthest from the instance boundary.
        y, x = np.unravel_index(ndimage.distance_transform_edt(gt).argmax(), gt.shape)
        emb, input_size = encode_image(mobile_sam, img)
        # Second prompt: a corner point must not give the instance (coordinates matter).
        prompts = [np.array([[x, y]], float), np.array([[2.0, 2.0]])]
        logits, _ = decode_prompts(mobile_sam, emb.half(), prompts, gt.shape, input_size, 2)
        pred, far = (logits > 0).numpy()
        iou = (pred & gt).sum() / (pred | gt).sum()
        assert iou > 0.5, f"image {iid}: IoU {iou:.2f}"
        assert (far & gt).sum() / gt.sum() < 0.5, f"image {iid}: corner prompt covers the instance"


def test_many_point_prompt_equals_predictor(encoded, tiny_sam):
    """A 14-point prompt (beside a 1-point one) takes SAM's own attention order; same results."""
    img, emb, input_size, pred = encoded
    rng = np.random.default_rng(3)
    many = np.stack([rng.uniform(0, 150, 14), rng.uniform(0, 90, 14)], 1)
    prompts = [many, POINTS[0]]
    logits, iou = decode_prompts(tiny_sam, emb, prompts, img.shape[:2], input_size, "all")
    for b, p in enumerate(prompts):
        masks, scores, _ = pred.predict(p, np.ones(len(p)), multimask_output=True, return_logits=True)
        np.testing.assert_allclose(logits[b].numpy(), masks, atol=1e-4)
        np.testing.assert_allclose(iou[b].numpy(), scores, atol=1e-5)
