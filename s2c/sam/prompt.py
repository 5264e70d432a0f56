"""SAM split in two: encode an image once, then prompt the decoder on the cached embedding.

This is what makes the cached CPM cheap: the heavy image encoder runs offline on each original
image (:func:`encode_image` / :func:`encode_images`), and during training only the prompt encoder
and mask decoder run (:func:`decode_prompts`), all classes of an image in one batched call.

Coordinates: points are (x, y) in ORIGINAL image pixels and go through SAM's own
``ResizeLongestSide.apply_coords`` exactly as ``SamPredictor`` does, so an integer pixel index
(e.g. from ``peak_local_max``) means the same thing here as in the reference code.

Batching: all prompts of an image share the embedding, so they are decoded in one call, padded to
a common length with label −1 ("not a point") tokens. SAM's own decoder has no attention mask, so
such padding is not a no-op there: the extra tokens are attended to (measured with MobileSAM on 8
coco-mini images, the padded mask's IoU with the unpadded one was median 0.975 but as low as
0.56). :func:`decode_prompts` therefore runs SAM's decoder weights through a re-statement of its
two-way transformer (:func:`_two_way_masked`) that masks the extra padding tokens out as attention
keys, which reproduces single-prompt ``SamPredictor`` results (to float precision) in one call.
``batching="group"`` instead calls SAM's unmodified modules once per distinct point count: equally
exact, the reference path, but slower on GPU (H100, MobileSAM, 20 prompts of 1–5 points:
10 ms padded vs 40 ms grouped).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

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


def _attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SAM's ``Attention.forward`` with an optional key mask (B, N_k) bool, True = attend.

    q, k, v may have batch 1 where the others have B: projected once, then broadcast.
    """
    b = max(q.shape[0], k.shape[0], v.shape[0])
    q, k, v = (attn._separate_heads(proj(x), attn.num_heads).expand(b, -1, -1, -1)
               for proj, x in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)))
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # default scale = 1/sqrt(c_head), as SAM
    return attn.out_proj(attn._recombine_heads(out))


def _softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dim (a handful of tokens): ~6× faster on CPU than torch.softmax there."""
    e = (x - x.amax(-1, keepdim=True)).exp_()
    return e / e.sum(-1, keepdim=True)


def _tokens_to_image(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention.forward`` for a few token queries over the image, reassociated.

    q (B, N, C) tokens; k, v (1|B, X, C) image (X = 64·64). SAM projects all X keys and values
    (X·C·C/2 each); here the queries go through the key projection instead (qW_k)·k, and the
    attention-weighted image through the value projection (p·v)W_v: the same products in another
    order, ~2.3× fewer operations per prompt. The key bias adds a constant per query row, which the
    softmax removes; the value bias passes through because attention weights sum to 1. Past
    nh·N > internal_dim tokens (prompts of more than ~10 points) SAM's order is cheaper and is used.
    """
    nh = attn.num_heads
    ch = attn.internal_dim // nh
    b, n, c = q.shape
    if nh * n > attn.internal_dim:  # many tokens: SAM's own order is the cheaper one
        return _attend(attn, q, k, v)
    qh = attn._separate_heads(attn.q_proj(q), nh)  # (B, nh, N, ch)
    qk = torch.einsum("bhnc,hcd->bhnd", qh, attn.k_proj.weight.view(nh, ch, c)) / math.sqrt(ch)
    p = torch.softmax(qk.reshape(b, nh * n, c) @ k.transpose(1, 2), dim=-1)  # (B, nh·N, X)
    pv = (p @ v).view(b, nh, n, c)
    out = torch.einsum("bhnd,hcd->bhnc", pv, attn.v_proj.weight.view(nh, ch, c)) + attn.v_proj.bias.view(nh, 1, ch)
    return attn.out_proj(attn._recombine_heads(out))


def _image_to_tokens(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     key_mask: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention.forward`` for image queries over a few tokens, reassociated.

    q (1|B, X, C) image; k, v (B, N, C) tokens; key_mask (B, N) bool, True = attend. The query and
    output projections are folded into per-token matrices (N·C each) instead of being applied to
    all X image positions; the query bias becomes a per-key score offset. SAM's order past
    nh·N > internal_dim tokens, as in :func:`_tokens_to_image`.
    """
    nh = attn.num_heads
    ch = attn.internal_dim // nh
    b, n, c = k.shape
    if nh * n > attn.internal_dim:  # many tokens: SAM's own order is the cheaper one
        return _attend(attn, q, k, v, key_mask)
    kh = attn._separate_heads(attn.k_proj(k), nh)  # (B, nh, N, ch)
    kq = torch.einsum("bhnc,hcd->bhnd", kh, attn.q_proj.weight.view(nh, ch, c)) / math.sqrt(ch)
    kb = torch.einsum("bhnc,hc->bhn", kh, attn.q_proj.bias.view(nh, ch)) / math.sqrt(ch)
    scores = q @ kq.reshape(b, nh * n, c).transpose(1, 2) + kb.reshape(b, 1, nh * n)  # (B, X, nh·N)
    scores = scores.view(b, -1, nh, n).masked_fill(~key_mask[:, None, None, :], float("-inf"))
    p = _softmax(scores).view(b, -1, nh * n)
    vh = attn._separate_heads(attn.v_proj(v), nh)  # (B, nh, N, ch)
    vo = torch.einsum("bhnc,dhc->bhnd", vh, attn.out_proj.weight.view(c, nh, ch))  # (B, nh, N, C)
    return torch.baddbmm(attn.out_proj.bias.view(1, 1, c), p, vo.reshape(b, nh * n, c))


def _two_way_masked(tf: TwoWayTransformer, image: torch.Tensor, image_pe: torch.Tensor,
                    tokens: torch.Tensor, key_mask: torch.Tensor,
                    n_read: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` where masked tokens are never attended to.

    image (1|B,C,h,w), image_pe (1|B,C,h,w), tokens (B,N,C), key_mask (B,N) → tokens (B,N,C),
    image (B,h*w,C); with ``n_read`` only the first n_read tokens come out (the others' final update
    is skipped). Masked tokens still get outputs, but nothing reads them, so every prompt is
    computed exactly as if it had been decoded alone (to float rounding: the cross attentions are
    reassociated, see :func:`_tokens_to_image`). With a batch-1 image (all prompts on one
    embedding) the first layer's image side is shared by all prompts.
    """
    keys = image.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, query_pe = tokens, tokens
    for layer in tf.layers:
        if layer.skip_first_layer_pe:  # SAM's first layer: no PE and no residual
            queries = _attend(layer.self_attn, queries, queries, queries, key_mask)
        else:
            q = queries + query_pe
            queries = queries + _attend(layer.self_attn, q, q, queries, key_mask)
        queries = layer.norm1(queries)
        k = keys + key_pe  # keys only change at norm4: SAM's second keys + key_pe is this one
        queries = layer.norm2(queries + _tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        out = _image_to_tokens(layer.cross_attn_image_to_token, k, queries + query_pe, queries, key_mask)
        keys = layer.norm4(out.add_(keys))
    # the final attention only updates tokens; only the first n_read (SAM's output tokens) are read
    queries, query_pe = queries[:, :n_read], query_pe[:, :n_read]
    q, k = queries + query_pe, keys + key_pe
    queries = tf.norm_final_attn(queries + _tokens_to_image(tf.final_attn_token_to_image, q, k, keys))
    return queries, keys


def _upscale(layers: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """SAM's ``output_upscaling`` in channels-last memory: x (B, C, h, w) → (B, C/8, 4h, 4w).

    SAM's LayerNorm2d normalises over channels with five separate passes over an NCHW tensor; in
    channels-last layout the same normalisation is one ``layer_norm`` call (~3× faster on CPU).
    """
    x = x.contiguous(memory_format=torch.channels_last)
    for m in layers:
        if isinstance(m, LayerNorm2d):
            x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), m.weight, m.bias, m.eps).permute(0, 3, 1, 2)
        else:
            x = m(x)
    return x


def _decode_masked(sam: Sam, emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded prompts in one call, padding masked: emb (1,256,64,64), coords (B,K,2) → (B,3,256,256), (B,3).

    Mirrors ``MaskDecoder.predict_masks`` (multimask outputs) with the masked transformer.
    """
    dec = sam.mask_decoder
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)  # sparse (B, K+1, C)
    b = sparse.shape[0]
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], dim=1)
    # Keep output tokens, real points and SAM's own trailing "not a point" token; drop our padding.
    key_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    key_mask[:, len(out_tokens): len(out_tokens) + labels.shape[1]] = labels >= 0
    # no mask prompts: dense is the same no-mask embedding for every prompt, so keep batch 1
    src = emb + dense[:1]
    pos = sam.prompt_encoder.get_dense_pe()
    hs, src = _two_way_masked(dec.transformer, src, pos, tokens, key_mask, n_read=len(out_tokens))
    src = src.expand(b, -1, -1)
    _, c, h, w = emb.shape
    up = _upscale(dec.output_upscaling, src.reshape(b, h, w, c).permute(0, 3, 1, 2))  # (B, C', 4h, 4w)
    hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
    masks = (up.permute(0, 2, 3, 1).reshape(b, -1, up.shape[1]) @ hyper.transpose(1, 2))  # (B, 16hw, 4)
    masks = masks.transpose(1, 2).reshape(b, -1, *up.shape[-2:])
    iou = dec.iou_prediction_head(hs[:, 0])
    return masks[:, 1:], iou[:, 1:]  # SAM's multimask outputs (index 0 is the single-mask output)


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
        low, iou = _decode_masked(sam, emb, coords, labels)
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
