"""SAM model registry: one ``segment_anything.modeling.Sam`` class for every backbone.

``vit_h`` / ``vit_l`` / ``vit_b`` are the official SAM image encoders; ``vit_t`` is MobileSAM, i.e.
the TinyViT encoder from the ``mobilesam-mirror`` package behind SAM's own prompt encoder and mask
decoder. Everything downstream (cache, prompting, everything-mode) therefore sees the same class
and the same decoder code whatever the encoder.

Construction is separate from loading: builders make the module, :func:`load_sam_weights` loads a
checkpoint strictly and, when the keys do not fit, says which model type the file looks like.

``vit_test`` is a tiny random encoder (one windowed ViT block, ~0.7M parameters mostly in the
neck) with the real decoder — for fast tests of code that needs a Sam but not its quality.
"""

from __future__ import annotations

import os
import pickle
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ..errors import S2CError
from ..weights import cached_sha256, resolve_sam_checkpoint

SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b", "vit_t")
TEST_MODEL_TYPES = ("vit_test",)
RANDOM_CHECKPOINT = "random-init"  # checkpoint_sha256 recorded for model_type vit_test

IMG_SIZE = 1024  # SAM's input side; embeddings are (256, IMG_SIZE/16, IMG_SIZE/16)
EMBED_DIM = 256
EMBED_SIZE = IMG_SIZE // 16


def _prompt_encoder() -> PromptEncoder:
    return PromptEncoder(
        embed_dim=EMBED_DIM,
        image_embedding_size=(EMBED_SIZE, EMBED_SIZE),
        input_image_size=(IMG_SIZE, IMG_SIZE),
        mask_in_chans=16,
    )


def _mask_decoder() -> MaskDecoder:
    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )


def _vit_encoder(embed_dim: int, depth: int, num_heads: int, global_attn: list[int]) -> ImageEncoderViT:
    return ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=IMG_SIZE,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=num_heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attn,
        window_size=14,
        out_chans=EMBED_DIM,
    )


def _tinyvit_encoder() -> torch.nn.Module:
    # MobileSAM's TinyViT-5M settings (mobile_sam.build_sam.build_sam_vit_t).
    with warnings.catch_warnings():
        # mobile_sam imports deprecated timm paths and re-registers timm's tiny_vit names: noise only.
        warnings.simplefilter("ignore", (FutureWarning, UserWarning))
        from mobile_sam.modeling.tiny_vit_sam import TinyViT  # here: under this filter, and only for vit_t

    return TinyViT(
        img_size=IMG_SIZE, in_chans=3, num_classes=1000,
        embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
        use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
    )


_ENCODERS: dict[str, Callable[[], torch.nn.Module]] = {
    "vit_h": lambda: _vit_encoder(1280, 32, 16, [7, 15, 23, 31]),
    "vit_l": lambda: _vit_encoder(1024, 24, 16, [5, 11, 17, 23]),
    "vit_b": lambda: _vit_encoder(768, 12, 12, [2, 5, 8, 11]),
    "vit_t": _tinyvit_encoder,
    "vit_test": lambda: _vit_encoder(32, 1, 2, []),  # windowed only: cheap at 64x64 tokens
}


def make_sam(model_type: str) -> Sam:
    """Construct an untrained ``Sam`` of ``model_type`` (random weights, eval mode)."""
    if model_type not in _ENCODERS:
        raise S2CError(f"unknown SAM model type {model_type!r}; use one of {', '.join(SAM_MODEL_TYPES)}")
    sam = Sam(
        image_encoder=_ENCODERS[model_type](),
        prompt_encoder=_prompt_encoder(),
        mask_decoder=_mask_decoder(),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.model_type = model_type
    return sam.eval()


def guess_model_type(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which SAM variant a state dict belongs to, from its image-encoder keys ("unknown" if none)."""
    if any(k.startswith("image_encoder.layers.") for k in state_dict):
        return "vit_t"
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is not None and pos.ndim == 4:
        return {1280: "vit_h", 1024: "vit_l", 768: "vit_b", 32: "vit_test"}.get(int(pos.shape[-1]), "unknown")
    return "unknown"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise S2CError(f"SAM checkpoint {path} not found; check sam.checkpoint or run `s2c fetch_weights --weights-dir DIR`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise S2CError(f"cannot read SAM checkpoint {path} ({e.__class__.__name__}); re-download it") from None
    # Fine-tuned SAM checkpoints are often wrapped as {"model": sd} or {"state_dict": sd}.
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and len(obj) <= 4:
            obj = obj[key]
    if not isinstance(obj, dict):
        raise S2CError(f"SAM checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _check_model_type(state_dict: Mapping[str, torch.Tensor], model_type: str, source: str) -> str:
    looks = guess_model_type(state_dict)
    if looks != "unknown" and looks != model_type:
        raise S2CError(
            f"{source} is a {looks} SAM checkpoint but sam.model_type is {model_type}; "
            f"set sam.model_type: {looks} or point sam.checkpoint at a {model_type} file"
        )
    return looks


def load_sam_weights(sam: Sam, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Sam:
    """Load ``state_dict`` into ``sam`` strictly; S2CError naming the model the keys look like."""
    model_type = getattr(sam, "model_type", "unknown")
    looks = _check_model_type(state_dict, model_type, source)
    try:
        sam.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise S2CError(
            f"{source} does not fit a {model_type} SAM (keys look like {looks}): {detail[:200]}; "
            "use the matching official checkpoint"
        ) from None
    return sam


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' → cuda when available else cpu; 'cuda' without a GPU is a user error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise S2CError("--device cuda requested but no CUDA device is visible; use --device cpu or auto")
    return dev


def build_sam(
    model_type: str, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> Sam:
    """Build a SAM of ``model_type`` (vit_h | vit_l | vit_b | vit_t | vit_test), eval mode.

    ``checkpoint=None`` leaves random weights (for tests). The returned module has
    ``.model_type``, ``.image_encoder`` (``.img_size`` 1024, output (B,256,64,64)),
    ``.prompt_encoder``, ``.mask_decoder``, ``.preprocess`` and ``.postprocess_masks``.
    """
    if model_type not in SAM_MODEL_TYPES + TEST_MODEL_TYPES:
        raise S2CError(f"unknown SAM model type {model_type!r}; use one of {', '.join(SAM_MODEL_TYPES)}")
    dev = resolve_device(device)
    state_dict = None
    if checkpoint is not None:
        # Read and type-check before constructing: a wrong file fails fast, not after vit_h's init.
        state_dict = _read_state_dict(Path(checkpoint))
        _check_model_type(state_dict, model_type, str(checkpoint))
    sam = make_sam(model_type)
    if state_dict is not None:
        load_sam_weights(sam, state_dict, source=str(checkpoint))
    sam.model_type = model_type
    return sam.to(dev).eval()


def load_sam(model_type: str, checkpoint: str | os.PathLike | None, weights_dir: str | os.PathLike,
             device: str | torch.device) -> tuple[Sam, str]:
    """The configured SAM on ``device`` and its checkpoint's sha256 (the cache identity).

    The checkpoint comes from :func:`s2c.weights.resolve_sam_checkpoint` (MobileSAM provisioned,
    official files hash-checked); ``vit_test`` is seeded random weights, the same in every job.
    """
    if model_type in TEST_MODEL_TYPES:
        torch.manual_seed(0)  # identical random weights in every part job
        return build_sam(model_type, None, device), RANDOM_CHECKPOINT
    ckpt = resolve_sam_checkpoint(model_type, checkpoint, weights_dir)
    return build_sam(model_type, ckpt, device), cached_sha256(ckpt)
