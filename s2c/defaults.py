"""The defaults and allowed words of the config keys the library's modules own, and the checks
that need nothing else: torch-free.

The workflow resolves every config section (:mod:`s2c.sections`) each time it builds a DAG; if these
values stayed in the modules that use them, every ``snakemake`` call (a dry run included) would load
torch, torchvision, OpenCV and segment-anything first. So the modules read them from here: the
classifier and the DeepLab net (:mod:`s2c.models`), the training augmentation
(:mod:`s2c.data.transforms`), CPM (:mod:`s2c.losses.cpm`) and SAM (:mod:`s2c.sam`). Each key's
meaning is documented where it is used; tests/test_layers.py keeps this module and
:mod:`s2c.sections` free of torch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .config import coerce_scalar, merge_section
from .errors import S2CError

# ------------------------------------------------------------------ CPU kernels
#: The workflow-level ``cpu_kernels`` key. PyTorch picks its CPU vector code (ATen's kernels, oneDNN's
#: convolutions) by the instruction set it finds, so one commit, config and thread count repeat a run
#: to the last bit on one CPU model but not on another. ``portable`` caps both at code every x86-64
#: CPU since SSE4.1 runs the same way: slower, and free of the instruction set, though not of every
#: other difference between machines (docs/USAGE.md, "Determinism").
CPU_KERNELS = ("native", "portable")
PORTABLE_CPU_ENV = {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41"}


def cpu_kernel_env(mode: str) -> dict[str, str]:
    """The environment the workflow's jobs get for ``cpu_kernels: <mode>`` (``native``: nothing)."""
    if mode not in CPU_KERNELS:
        raise S2CError(f"cpu_kernels: {mode!r} is not one of {', '.join(CPU_KERNELS)}")
    return dict(PORTABLE_CPU_ENV) if mode == "portable" else {}


# ------------------------------------------------------------------ the classifier and DeepLab
#: The model keys of the ``cam`` section (:func:`s2c.models.build_classifier`).
CAM_DEFAULTS = {
    "backbone": "resnet38d",
    "pretrained": True,
    "output_stride": 8,
    "freeze_bn": True,
    "freeze_stem": True,
    "feat_dim": 256,
}
#: The ``seg`` section's model keys (:func:`s2c.models.build_deeplab`).
SEG_DEFAULTS = {
    "backbone": "resnet101",
    "pretrained": True,
    "output_stride": 16,
    "head": "v3plus",
    "freeze_bn": False,
}


def cfg_get(cfg: dict, defaults: dict, section: str) -> dict:
    """``defaults`` overridden by the matching keys of ``cfg``; type errors name the key."""
    out = dict(defaults)
    for k in defaults:
        if k in cfg and cfg[k] is not None:
            out[k] = coerce_scalar(defaults[k], cfg[k])
    for k in ("output_stride", "feat_dim"):
        if k in out and (isinstance(out[k], bool) or not isinstance(out[k], int)):
            raise S2CError(f"config key {section}.{k} must be an integer, got {out[k]!r}")
    for k in ("freeze_bn", "freeze_stem"):
        if k in out and not isinstance(out[k], bool):
            raise S2CError(f"config key {section}.{k} must be true or false, got {out[k]!r}")
    if not isinstance(out.get("pretrained"), (bool, str)):
        raise S2CError(f"config key {section}.pretrained must be true, false or a file path, got {out.get('pretrained')!r}")
    return out


# ------------------------------------------------------------------ training augmentation
#: ``cam.augment`` (:class:`s2c.data.transforms.TrainAugment` documents the keys).
AUG_DEFAULTS: dict = {
    "augment": True,
    "resize_long": [256, 512],
    "crop_size": 256,
    "flip": True,
    "color_jitter": [0.4, 0.4, 0.4, 0.1],
    "color_jitter_p": 0.8,
    "grayscale_p": 0.02,
}


def crop_pair(v) -> tuple[int, int]:
    """``crop_size`` (an int or [h, w]) as (h, w)."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise S2CError(f"crop_size must be an int or [h, w], got {v}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def augment_settings(cfg: dict | None) -> dict:
    """The training augmentation's settings (:class:`s2c.data.transforms.TrainAugment`): ``cfg`` over
    :data:`AUG_DEFAULTS`, with unknown keys and a bad ``resize_long`` / ``crop_size`` refused."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(AUG_DEFAULTS))
    if unknown:
        raise S2CError(f"unknown augmentation key(s) {unknown}; known keys: {sorted(AUG_DEFAULTS)}")
    cfg = {**AUG_DEFAULTS, **cfg}
    lo, hi = (int(v) for v in cfg["resize_long"])
    if not 1 <= lo <= hi:
        raise S2CError(f"resize_long must be [lo, hi] with 1 <= lo <= hi, got {cfg['resize_long']}")
    crop_pair(cfg["crop_size"])
    return cfg


# ------------------------------------------------------------------ CPM
#: ``cam.cpm.alpha_sam``, ``confidence``, ``background``, ``loss`` (:mod:`s2c.losses.cpm`).
ALPHA_SAM = ("logits", "sigmoid", "stability")
CONFIDENCE = ("both", "sam", "cam", "none")
BACKGROUND = ("uncovered", "tau")
LOSS_MODES = ("ce", "l1")
#: ``cam.cpm.peak_rule``: :func:`s2c.losses.cpm.find_peaks` (s2c) or :func:`~s2c.losses.cpm.find_peaks_reference` (the authors' code).
PEAK_RULES = ("s2c", "reference")
#: ``cam.cpm.confidence_source``: the SAM logits α_sam comes from (see :func:`s2c.losses.cpm.cpm_pseudo_label`).
CONFIDENCE_SOURCES = ("postprocessed", "lowres")
#: ``cam.cpm.sam_resize`` (online mode): SAM's own ResizeLongestSide of the uint8 crop, or the
#: authors' squash of the float crop to img_size² (:func:`s2c.sam.prompt.squash_sam_input`).
SAM_RESIZE = ("sam", "reference")

# ------------------------------------------------------------------ SAM
DEFAULT_MODEL_TYPE = "vit_t"  # the sam section's model_type default (MobileSAM: provisioned, CPU-friendly)
#: ``sam.everything`` (:mod:`s2c.sam.everything` documents the generators).
EVERYTHING_DEFAULTS: dict[str, Any] = {
    "impl": "fast",  # fast | stock
    "points_per_side": 32,
    "points_per_batch": 64,  # stock generator's prompt batch; speed only
    "fast_points_per_batch": None,  # fast generator's prompt batch (None: 256 GPU / 4 CPU); speed only
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 0,
    "overlap": "smallest_area",  # smallest_area (paper) | predicted_iou (reference code)
    # fast only
    "skip_covered": False,  # approximate: faster, drops some sub-part masks (see s2c.sam.everything)
    # 0.05 already changed ~1 mask per 30 on COCO (agreement 0.993); 0.15 gave identical maps on
    # 8 COCO images at no measurable cost on an H100
    "stability_margin": 0.15,
    "shared_decoder": True,  # s2c.sam.decoder.predict_masks: the image side of layer 0 computed once per batch
    # decode from the embedding cache (fp16) instead of running the encoder again: the encoder is
    # a third of the per-image time with MobileSAM on CPU and most of it with ViT-H on a GPU
    "reuse_embedding": True,
}
OVERLAP_RULES = ("smallest_area", "predicted_iou")
IMPLS = ("fast", "stock")
_NO_EFFECT_ON_OUTPUT = ("points_per_batch", "fast_points_per_batch", "shared_decoder")
_FAST_ONLY = ("skip_covered", "stability_margin", "shared_decoder", "reuse_embedding")


def resolve_everything_cfg(cfg: dict | None) -> dict:
    """``cfg`` (the ``sam.everything`` section) over :data:`EVERYTHING_DEFAULTS`, validated."""
    cfg = merge_section(EVERYTHING_DEFAULTS, cfg, "sam.everything")
    if cfg["impl"] not in IMPLS:
        raise S2CError(f"sam.everything.impl must be one of {IMPLS}, got {cfg['impl']!r}")
    if cfg["overlap"] not in OVERLAP_RULES:
        raise S2CError(f"sam.everything.overlap must be one of {OVERLAP_RULES}, got {cfg['overlap']!r}")
    keys = [k for k in ("points_per_side", "points_per_batch", "fast_points_per_batch") if cfg[k] is not None]
    if min(int(cfg[k]) for k in keys) < 1:
        raise S2CError("sam.everything.points_per_side / points_per_batch / fast_points_per_batch must be >= 1")
    return cfg


def decodes_cached_embedding(cfg: dict | None) -> bool:
    """Whether segment-everything reads the embedding cache (the fast generator with
    ``reuse_embedding``) rather than encoding each image itself."""
    cfg = resolve_everything_cfg(cfg)
    return cfg["impl"] == "fast" and bool(cfg["reuse_embedding"])


def everything_settings(cfg: dict | None) -> dict:
    """The settings that determine the SE maps (recorded in the store identity)."""
    cfg = resolve_everything_cfg(cfg)
    drop = set(_NO_EFFECT_ON_OUTPUT) | (set(_FAST_ONLY) if cfg["impl"] == "stock" else set())
    return {k: v for k, v in cfg.items() if k not in drop}


def settings_tag(cfg: dict | None) -> str:
    """8 hex digits of :func:`everything_settings`: the workflow names SE stores ``se-<tag>``, so
    two configs that segment one dataset differently (e.g. 8 and 32 points per side) never share,
    overwrite or silently reuse each other's maps."""
    blob = json.dumps(everything_settings(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]
