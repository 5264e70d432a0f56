"""SAM's mask decoder, re-stated once: the copy-free and the padding-masked forms of
``MaskDecoder.predict_masks`` (multimask outputs) that the rest of s2c decodes with.

Two callers decode many prompts on ONE image embedding:

- segment everything (:mod:`s2c.sam.everything`): hundreds of single-point prompts. SAM's
  ``predict_masks`` repeats the (1, 256, 64, 64) embedding and its positional encoding once per
  prompt; :func:`predict_masks` passes batch-1 image tensors instead, so broadcasting computes the
  first layer's image-side projections once, and SAM's own transformer runs unchanged.
- CPM (:func:`s2c.sam.prompt.decode_prompts`): one multi-point prompt per class, padded to a
  common length with "not a point" tokens. SAM's decoder has no attention mask, so padding is not a
  no-op there; with ``key_mask`` :func:`predict_masks` runs SAM's weights through
  :func:`two_way_masked`, which never attends to the padding, so every prompt comes out as if it
  had been decoded alone.

The cross attentions of :func:`two_way_masked` are reassociated (fewer operations for a few
tokens against 64·64 image positions, see :func:`tokens_to_image`), and :func:`upscale` runs
SAM's output upscaling in channels-last memory: the same products in another order, equal to
SAM's outputs to float rounding (tests/test_prompt.py, tests/test_everything.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayTransformer


def attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
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
    """Softmax over a short last dim (a handful of tokens): cheaper on CPU than torch.softmax there."""
    e = (x - x.amax(-1, keepdim=True)).exp_()
    return e / e.sum(-1, keepdim=True)


def tokens_to_image(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
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
        return attend(attn, q, k, v)
    qh = attn._separate_heads(attn.q_proj(q), nh)  # (B, nh, N, ch)
    qk = torch.einsum("bhnc,hcd->bhnd", qh, attn.k_proj.weight.view(nh, ch, c)) / math.sqrt(ch)
    p = torch.softmax(qk.reshape(b, nh * n, c) @ k.transpose(1, 2), dim=-1)  # (B, nh·N, X)
    pv = (p @ v).view(b, nh, n, c)
    out = torch.einsum("bhnd,hcd->bhnc", pv, attn.v_proj.weight.view(nh, ch, c)) + attn.v_proj.bias.view(nh, 1, ch)
    return attn.out_proj(attn._recombine_heads(out))


def image_to_tokens(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     key_mask: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention.forward`` for image queries over a few tokens, reassociated.

    q (1|B, X, C) image; k, v (B, N, C) tokens; key_mask (B, N) bool, True = attend. The query and
    output projections are folded into per-token matrices (N·C each) instead of being applied to
    all X image positions; the query bias becomes a per-key score offset. SAM's order past
    nh·N > internal_dim tokens, as in :func:`tokens_to_image`.
    """
    nh = attn.num_heads
    ch = attn.internal_dim // nh
    b, n, c = k.shape
    if nh * n > attn.internal_dim:  # many tokens: SAM's own order is the cheaper one
        return attend(attn, q, k, v, key_mask)
    kh = attn._separate_heads(attn.k_proj(k), nh)  # (B, nh, N, ch)
    kq = torch.einsum("bhnc,hcd->bhnd", kh, attn.q_proj.weight.view(nh, ch, c)) / math.sqrt(ch)
    kb = torch.einsum("bhnc,hc->bhn", kh, attn.q_proj.bias.view(nh, ch)) / math.sqrt(ch)
    scores = q @ kq.reshape(b, nh * n, c).transpose(1, 2) + kb.reshape(b, 1, nh * n)  # (B, X, nh·N)
    scores = scores.view(b, -1, nh, n).masked_fill(~key_mask[:, None, None, :], float("-inf"))
    p = _softmax(scores).view(b, -1, nh * n)
    vh = attn._separate_heads(attn.v_proj(v), nh)  # (B, nh, N, ch)
    vo = torch.einsum("bhnc,dhc->bhnd", vh, attn.out_proj.weight.view(c, nh, ch))  # (B, nh, N, C)
    return torch.baddbmm(attn.out_proj.bias.view(1, 1, c), p, vo.reshape(b, nh * n, c))


def two_way_masked(tf: TwoWayTransformer, image: torch.Tensor, image_pe: torch.Tensor,
                    tokens: torch.Tensor, key_mask: torch.Tensor,
                    n_read: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` where masked tokens are never attended to.

    image (1|B,C,h,w), image_pe (1|B,C,h,w), tokens (B,N,C), key_mask (B,N) → tokens (B,N,C),
    image (B,h*w,C); with ``n_read`` only the first n_read tokens come out (the others' final update
    is skipped). Masked tokens still get outputs, but nothing reads them, so every prompt is
    computed exactly as if it had been decoded alone (to float rounding: the cross attentions are
    reassociated, see :func:`tokens_to_image`). With a batch-1 image (all prompts on one
    embedding) the first layer's image side is shared by all prompts.
    """
    keys = image.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, query_pe = tokens, tokens
    for layer in tf.layers:
        if layer.skip_first_layer_pe:  # SAM's first layer: no PE and no residual
            queries = attend(layer.self_attn, queries, queries, queries, key_mask)
        else:
            q = queries + query_pe
            queries = queries + attend(layer.self_attn, q, q, queries, key_mask)
        queries = layer.norm1(queries)
        k = keys + key_pe  # keys only change at norm4: SAM's second keys + key_pe is this one
        queries = layer.norm2(queries + tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        out = image_to_tokens(layer.cross_attn_image_to_token, k, queries + query_pe, queries, key_mask)
        keys = layer.norm4(out.add_(keys))
    # the final attention only updates tokens; only the first n_read (SAM's output tokens) are read
    queries, query_pe = queries[:, :n_read], query_pe[:, :n_read]
    q, k = queries + query_pe, keys + key_pe
    queries = tf.norm_final_attn(queries + tokens_to_image(tf.final_attn_token_to_image, q, k, keys))
    return queries, keys


def upscale(layers: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """SAM's ``output_upscaling`` in channels-last memory: x (B, C, h, w) → (B, C/8, 4h, 4w).

    SAM's LayerNorm2d normalises over channels with five separate passes over an NCHW tensor; in
    channels-last layout the same normalisation is one ``layer_norm`` call (one pass instead of five).
    """
    x = x.contiguous(memory_format=torch.channels_last)
    for m in layers:
        if isinstance(m, LayerNorm2d):
            x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), m.weight, m.bias, m.eps).permute(0, 3, 1, 2)
        else:
            x = m(x)
    return x


def predict_masks(decoder: MaskDecoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                  sparse: torch.Tensor, dense: torch.Tensor,
                  key_mask: torch.Tensor | None = None,
                  sam_upscaling: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder(..., multimask_output=True)`` for B point prompts on ONE image embedding.

    Args:
      image_embeddings: (1, C, h, w); image_pe: (1, C, h, w) (``get_dense_pe()``).
      sparse: (B, N, C) point tokens of SAM's prompt encoder; dense: (B, C, h, w), the no-mask
        embedding (identical rows: mask prompts are not supported here).
      key_mask: optional (B, N) bool, False = a padding token that no prompt may attend to; None
        runs SAM's own transformer (nothing masked).
      sam_upscaling: run SAM's own ``output_upscaling`` modules instead of :func:`upscale`: slower,
        but together with ``key_mask=None`` bit-identical to ``MaskDecoder`` (segment everything
        uses it, so stored SE maps stay reproducible to the bit).
    Returns:
      low-res logits (B, 3, 4h, 4w) and predicted IoU (B, 3): SAM's three multimask outputs.
    """
    b = sparse.shape[0]
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], dim=1)
    src = image_embeddings + dense[:1]  # without mask prompts every row of dense is the same
    _, c, h, w = src.shape
    if key_mask is None:
        hs, src = decoder.transformer(src, image_pe, tokens)  # keys become per-prompt after layer 0
    else:
        full = torch.cat([key_mask.new_ones(b, len(out_tokens)), key_mask], dim=1)
        hs, src = two_way_masked(decoder.transformer, src, image_pe, tokens, full, n_read=len(out_tokens))
    src = src.expand(b, -1, -1)  # (only when a layer-free transformer kept batch 1)
    x = src.transpose(1, 2).reshape(b, c, h, w)  # a view: (B, C, h, w) with channels-last strides
    hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    if sam_upscaling:
        up = decoder.output_upscaling(x)  # (B, C', 4h, 4w)
        masks = (hyper @ up.flatten(2)).view(b, -1, *up.shape[-2:])
    else:
        up = upscale(decoder.output_upscaling, x)  # (B, C', 4h, 4w), channels-last memory
        masks = up.permute(0, 2, 3, 1).reshape(b, -1, up.shape[1]) @ hyper.transpose(1, 2)  # (B, 16hw, 4)
        masks = masks.transpose(1, 2).reshape(b, -1, *up.shape[-2:])
    iou = decoder.iou_prediction_head(hs[:, 0])
    return masks[:, 1:], iou[:, 1:]  # index 0 is SAM's single-mask output
