"""SAM split in two: encode an image once, then prompt the decoder on the cached embedding.

This is what makes the cached CPM cheap: the heavy image encoder runs offline on each original
image (:func:`encode_image` / :func:`encode_images`), and during training only the prompt encoder
and mask decoder run (:func:`decode_prompts`), all classes of an image in one batched call.

Coordinates: points are (x, y) in ORIGINAL image pixels and go through SAM's own
``ResizeLongestSide.apply_coords`` exactly as ``SamPredictor`` does, so an integer pixel index
(e.g. from ``peak_local_max``) means the same thing here as in the reference code.

Batching: all prompts of an image share the embedding, so they are decoded in one call, padded to
a common length with label −1 ("not a point") tokens. SAM's own decoder has no attention mask, so
such padding is not a no-op there: the extra tokens are attended to and change the masks.
:func:`decode_prompts` therefore runs SAM's decoder weights through a re-statement of its
two-way transformer (:func:`s2c.sam.decoder.two_way_masked`) that masks the extra padding tokens out as attention
keys, which reproduces single-prompt ``SamPredictor`` results (to float precision) in one call
(:func:`s2c.sam.decoder.predict_masks` with a key mask).
``batching="group"`` instead calls SAM's unmodified modules once per distinct point count: equally
exact, the reference path, but one decoder call per point count instead of one per image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from .decoder import predict_masks

MultimaskIndex = int | str  # 0, 1, 2, "best" or "all"


def sam_input_size(orig_size: Sequence[int], img_size: int = 1024) -> tuple[int, int]:
    """(h, w) of the image after SAM's longest-side resize to ``img_size`` (before padding)."""
    h, w = int(orig_size[0]), int(orig_size[1])
    return ResizeLongestSide.get_preprocess_shape(h, w, img_size)


def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = getattr(image, "dtype", type(image).__name__), getattr(image, "shape", None)
        raise ValueError(f"expected a uint8 RGB array (H,W,3), got {got}")


def _to_sam_input(sam: Sam, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 (H,W,3) → normalised, padded float tensor (1,3,S,S) on sam's device, and (h,w)."""
    _check_image(image)
    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image)  # PIL resize, as SamPredictor
    x = torch.as_tensor(resized, device=sam.device).permute(2, 0, 1).contiguous()[None]
    return sam.preprocess(x.float()), (resized.shape[0], resized.shape[1])


@torch.no_grad()
def encode_images(
    sam: Sam, images: Sequence[np.ndarray], amp_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Image embeddings of a batch of uint8 RGB images (any sizes).

    Returns float32 (B, 256, 64, 64) on sam's device. The per-image input size is
    :func:`sam_input_size` of its original size. ``amp_dtype`` (e.g. torch.bfloat16) runs the
    encoder under autocast on CUDA.
    """
    if len(images) == 0:
        raise ValueError("encode_images needs at least one image")
    batch = torch.cat([_to_sam_input(sam, im)[0] for im in images])
    enabled = amp_dtype is not None and sam.device.type == "cuda"
    with torch.autocast(device_type=sam.device.type, dtype=amp_dtype or torch.float32, enabled=enabled):
        emb = sam.image_encoder(batch)
    return emb.float()


def squash_sam_input(images: torch.Tensor, img_size: int = 1024) -> torch.Tensor:
    """The authors' SAM input (``update()``): float RGB (B, 3, h, w) in [0, 255] resized to
    (img_size, img_size) — aspect ratio not kept, bilinear, ``align_corners=True`` — and truncated
    to uint8 (B, 3, img_size, img_size), where SamPredictor rounds to uint8 first and resizes the
    longest side with PIL (antialiased)."""
    x = F.interpolate(images.float(), (img_size, img_size), mode="bilinear", align_corners=True)
    # truncation toward zero, as the reference's .to(torch.uint8); the clamp changes nothing in
    # [-1, 256) and only fixes what C's float-to-uint8 cast leaves undefined outside it
    return x.clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def encode_squashed(sam: Sam, images: torch.Tensor) -> torch.Tensor:
    """Embeddings (B, 256, 64, 64) float32 of :func:`squash_sam_input` of ``images`` (float RGB
    (B, 3, h, w) in [0, 255]): the whole batch in one encoder call, as the reference. Its SAM input
    size is (img_size, img_size) whatever (h, w); :func:`squashed_points` maps prompts into it."""
    x = squash_sam_input(images.to(sam.device), sam.image_encoder.img_size)
    return sam.image_encoder(sam.preprocess(x.float())).float()


def squashed_points(points: np.ndarray, crop_size: Sequence[int], img_size: int = 1024) -> np.ndarray:
    """(K, 2) (x, y) pixel indices in an (h, w) crop → the squashed img_size² frame, scaled so that
    :func:`decode_prompts` with ``orig_size = input_size = (img_size, img_size)`` takes them as is
    (the reference: index × img_size / h, one factor per axis)."""
    h, w = int(crop_size[0]), int(crop_size[1])
    return np.asarray(points, dtype=np.float32) * np.array([img_size / w, img_size / h], dtype=np.float32)


@torch.no_grad()
def encode_image(
    sam: Sam, image: np.ndarray, amp_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Embedding (256, 64, 64) float32 of one uint8 (H,W,3) image, and its SAM input size (h, w)."""
    _check_image(image)
    return encode_images(sam, [image], amp_dtype)[0], sam_input_size(image.shape[:2], sam.image_encoder.img_size)


def prepare_points(
    points: Sequence[np.ndarray | torch.Tensor],
    orig_size: Sequence[int],
    img_size: int = 1024,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """B point sets (K_b, 2) in original (x, y) → SAM-frame coords (B, K, 2) and labels (B, K).

    K = max K_b; real points are positive (label 1), padding is label −1 at (0, 0).
    """
    if len(points) == 0:
        raise ValueError("decode_prompts needs at least one prompt")
    pts = [torch.as_tensor(np.asarray(p, dtype=np.float32)).reshape(-1, 2) for p in points]
    if any(len(p) == 0 for p in pts):
        raise ValueError("every prompt needs at least one point (CPM always has the CAM's global max)")
    k = max(len(p) for p in pts)
    coords = torch.zeros(len(pts), k, 2)
    labels = torch.full((len(pts), k), -1.0)
    for i, p in enumerate(pts):
        coords[i, : len(p)] = p
        labels[i, : len(p)] = 1.0
    coords = ResizeLongestSide(img_size).apply_coords_torch(coords, tuple(int(s) for s in orig_size))
    return coords.to(device), labels.to(device)


def _select(low: torch.Tensor, iou: torch.Tensor, multimask_index: MultimaskIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one of SAM's 3 multimask outputs per prompt: low (B,3,h,w), iou (B,3) → (B,h,w), (B,).

    "all" keeps the three: (B,3,h,w), (B,3).
    """
    if multimask_index == "all":
        return low, iou
    if multimask_index == "best":
        idx = iou.argmax(dim=1)
    elif multimask_index in (0, 1, 2):
        idx = torch.full((low.shape[0],), int(multimask_index), dtype=torch.long, device=low.device)
    else:
        raise ValueError(f"multimask_index must be 0, 1, 2, 'best' or 'all', got {multimask_index!r}")
    rows = torch.arange(low.shape[0], device=low.device)
    return low[rows, idx], iou[rows, idx]


def _decode(sam: Sam, emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt-encoder + mask-decoder call: emb (1,256,64,64), coords (B,K,2) → (B,3,256,256), (B,3)."""
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    return sam.mask_decoder(
        image_embeddings=emb,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )


@torch.no_grad()
def decode_prompts(
    sam: Sam,
    embedding: torch.Tensor,
    points: Sequence[np.ndarray | torch.Tensor],
    orig_size: Sequence[int],
    input_size: Sequence[int],
    multimask_index: MultimaskIndex = 2,
    return_lowres: bool = False,
    batching: str = "pad",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for B all-positive multi-point prompts on one cached image embedding.

    Args:
      embedding: (256, 64, 64) (or (1,256,64,64)), any float dtype; cast to the decoder's.
      points: B arrays (K_b, 2) of (x, y) in original-image pixels; one prompt per entry.
      orig_size: (H, W) of the original image. input_size: (h, w) after SAM's resize
        (stored with the embedding; equals :func:`sam_input_size` of orig_size).
      multimask_index: which of SAM's 3 outputs to keep (reference CPM: 2, the largest), or
        "best" for the highest predicted IoU, or "all" to keep the three (adds a dim of 3 after B).
      return_lowres: skip upsampling and return SAM's (B, 256, 256) logits in the padded
        1024-frame; :func:`lowres_to_size` turns them into any output size later.
      batching: "pad" (one call, −1 padding masked out; the default) or "group" (SAM's own
        modules, one call per distinct point count). Both match single-prompt calls exactly.

    Returns:
      logits float32 (B, H, W) at original size (threshold 0 = SAM's mask), or (B, 256, 256)
      with ``return_lowres``; iou_pred float32 (B,).
    """
    # Validate before the (costly) decoder runs.
    if multimask_index not in (0, 1, 2, "best", "all"):
        raise ValueError(f"multimask_index must be 0, 1, 2, 'best' or 'all', got {multimask_index!r}")
    if batching not in ("pad", "group"):
        raise ValueError(f"batching must be 'pad' or 'group', got {batching!r}")
    dtype = next(sam.mask_decoder.parameters()).dtype
    emb = embedding.to(device=sam.device, dtype=dtype)
    if emb.ndim == 3:
        emb = emb[None]
    coords, labels = prepare_points(points, orig_size, sam.image_encoder.img_size, sam.device)
    coords = coords.to(dtype)

    if batching == "pad":
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)  # (B, K+1, C)
        # mask only our padding; SAM's own trailing "not a point" token stays, as in a single call
        key_mask = torch.ones(sparse.shape[:2], dtype=torch.bool, device=sparse.device)
        key_mask[:, : labels.shape[1]] = labels >= 0
        low, iou = predict_masks(sam.mask_decoder, emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, key_mask)
    else:
        counts = (labels > 0).sum(dim=1)
        low = torch.empty(len(counts), 3, 4 * emb.shape[-2], 4 * emb.shape[-1], device=sam.device, dtype=dtype)
        iou = torch.empty(len(counts), 3, device=sam.device, dtype=dtype)
        for k in torch.unique(counts).tolist():
            rows = (counts == k).nonzero(as_tuple=True)[0]
            low[rows], iou[rows] = _decode(sam, emb, coords[rows, :k], labels[rows, :k])

    low, iou = _select(low, iou, multimask_index)
    low, iou = low.float(), iou.float()
    if return_lowres:
        return low, iou
    return lowres_to_size(low, input_size, orig_size, sam.image_encoder.img_size), iou


def lowres_straight(low_res: torch.Tensor, input_size: Sequence[int], out_size: Sequence[int],
                    img_size: int = 1024) -> torch.Tensor:
    """SAM low-res logits (..., 256, 256) → (..., *out_size) in ONE bilinear resize, as the authors
    take α_sam (``update()``: the low-res logits interpolated straight to the crop), where
    :func:`lowres_to_size` (SAM's postprocessing) goes up to the img_size frame and back down.

    The low-res frame spans the padded img_size² frame, of which ``input_size`` is the image: it
    is resized to that frame at ``out_size``'s scale, then cropped; with ``input_size`` =
    (img_size, img_size) that is a plain resize to ``out_size``.
    """
    lead = low_res.shape[:-2]
    oh, ow = int(out_size[0]), int(out_size[1])
    full = (round(img_size * oh / int(input_size[0])), round(img_size * ow / int(input_size[1])))
    x = F.interpolate(low_res.reshape(-1, 1, *low_res.shape[-2:]).float(), full, mode="bilinear",
                      align_corners=False)[..., :oh, :ow]
    return x.reshape(*lead, oh, ow)


def lowres_to_size(
    low_res: torch.Tensor, input_size: Sequence[int], out_size: Sequence[int], img_size: int = 1024
) -> torch.Tensor:
    """SAM low-res logits (..., 256, 256) → (..., *out_size), like ``Sam.postprocess_masks``.

    Upsample to the padded ``img_size`` frame, crop away the padding (``input_size``), resize to
    ``out_size`` — with out_size = the original (H, W) this is exactly SAM's own postprocessing.
    """
    lead = low_res.shape[:-2]
    x = low_res.reshape(-1, 1, *low_res.shape[-2:]).float()
    x = F.interpolate(x, (img_size, img_size), mode="bilinear", align_corners=False)
    x = x[..., : int(input_size[0]), : int(input_size[1])]
    x = F.interpolate(x, (int(out_size[0]), int(out_size[1])), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *x.shape[-2:])
