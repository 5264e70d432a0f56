"""The hyperparameter sections of the config: every key's default and allowed values, one place.

The JSON schema (``workflow/schemas/config.schema.yaml``) validates the types and ranges of every
section and owns the defaults of the workflow-level keys only (``run``, ``splits``, ``ablations``, …);
the defaults of the stage sections live here, next to the resolver of each section, or (the keys a
library module reads) in :mod:`s2c.defaults`, and :data:`SCHEMA_DEFAULTS` hands those the schema fills to
:func:`validate_workflow_config` (so the schema states no default of its own for them). Stage modules
import their section from here (``train_cam`` takes ``cam``, ``train_seg`` takes ``seg``, …) and
:func:`resolve_sections` runs every resolver when the DAG is built, so a typo such as ``cam.lrr`` or
``cam.augment.fllip`` fails before any job starts.

This module sits below the stages and imports none of them: the registry is built from the
library's own default dicts (those of :mod:`s2c.defaults`, :data:`s2c.data.DATA_DEFAULTS`,
:data:`s2c.refine.crf.CRF_DEFAULTS`, :data:`s2c.refine.sam_post.SAM_POST_DEFAULTS`). Like them it
loads no torch: the workflow imports it to build every DAG.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .config import merge_section, validate_config
from .data import DATA_DEFAULTS
from .defaults import (
    ALPHA_SAM,
    AUG_DEFAULTS,
    BACKGROUND,
    CAM_DEFAULTS,
    CONFIDENCE,
    CONFIDENCE_SOURCES,
    DEFAULT_MODEL_TYPE,
    LOSS_MODES,
    PEAK_RULES,
    SAM_RESIZE,
    SEG_DEFAULTS,
    augment_settings,
    cfg_get,
)
from .errors import S2CError
from .metrics import DEFAULT_THRESHOLDS
from .refine.crf import CRF_DEFAULTS
from .refine.sam_post import SAM_POST_DEFAULTS

# ---------------------------------------------------------------------------------------- sam
#: The ``sam`` section: the SAM model and how its caches are built (the schema checks the types).
SAM_SECTION_DEFAULTS: dict[str, Any] = {
    "model_type": DEFAULT_MODEL_TYPE,
    "checkpoint": None,       # null with vit_t: MobileSAM is provisioned into weights_dir
    "parts": 1,               # cache jobs per split, one store each
    "batch_size": 4,
    "amp": False,
    "skip_corrupt": False,
    "num_workers": 2,
    "embed_codec": "fp16",    # s2c.sam.cache.EMBED_CODECS: fp16 | int8 | int6
    "everything": {},         # its keys' defaults: s2c.defaults.EVERYTHING_DEFAULTS
}
# Each cache stage takes these keys of it (the rules pass exactly these, s2c.stages.sam_embed /
# s2c.stages.sam_everything document them); sam_everything decodes the embedding store written with
# embed_codec (everything.reuse_embedding).
#: What sam_embed takes of the ``sam`` section.
SAM_EMBED_DEFAULTS: dict[str, Any] = {k: SAM_SECTION_DEFAULTS[k] for k in (
    "model_type", "checkpoint", "batch_size", "amp", "skip_corrupt", "num_workers", "embed_codec")}
#: What sam_everything takes of the ``sam`` section.
SAM_EVERYTHING_DEFAULTS: dict[str, Any] = {k: SAM_SECTION_DEFAULTS[k] for k in (
    "model_type", "checkpoint", "skip_corrupt", "num_workers", "everything", "embed_codec")}

#: The folder (``results/<run>/ablations/<row>/seed<S>``) of the shared L_CLS-only warm-up that
#: the ablation rows start from when the workflow's ``ablations.warmup`` is set.
WARMUP_ROW = "warmup"

# ---------------------------------------------------------------------------------------- cam
#: The ``cam`` section (train_cam; documented key by key in :mod:`s2c.stages.train_cam`), less the model
#: keys (:data:`MODEL_KEYS`, defaults in :data:`s2c.defaults.CAM_DEFAULTS`).
#: The values are those of the authors' code (sangrockEG/S2C@102e14c, ``train.py`` arguments and
#: ``models/model_s2c.py`` ``update()``), pinned by tests/test_reference_defaults.py; where the paper
#: says otherwise (6 epochs with CPM after the first, SSC temperature 0.5) it is a config switch.
#: Four keys default to explained departures (ssc.absent_prototypes, cpm.sam_resize,
#: cpm.peak_rule, cpm.confidence_source); set to the reference's words they give its step.
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 40,
    "batch_size": 8,
    "lr": 0.02,
    "lr_mult_new": 1.0,
    "weight_decay": 5e-4,
    "momentum": 0.0,
    "poly_power": 0.9,
    "seed": 0,
    "num_workers": 2,
    "amp": False,
    "channels_last": False,
    "micro_batch": None,
    "augment": {},
    "sam_mode": "cached",
    "ablation": None,
    "init": None,
    "ssc": {"enabled": True, "level": "feature", "temperature": 1.0, "unassigned_prototype": True, "size": None,
            "weight": 1.0, "absent_prototypes": False},
    "cpm": {
        "enabled": True, "start_epoch": 2, "start_step": None, "start_fraction": None, "prompt_cam": "multiscale",
        "scales": [0.5, 1.0, 1.5, 2.0], "prompts": "peaks", "min_pred_iou": None,
        "prompt_batch": None,
        "min_distance": 20, "threshold": 0.5, "single_peak": False, "exclude_border": True,
        "multimask_index": 2, "alpha_sam": "logits", "confidence": "both", "background": "uncovered",
        "tau": 0.5, "loss": "ce", "batching": "pad", "weight": 1.0,
        # explained departures from the authors' code, each with a switch to its behaviour
        # (s2c.stages.train_cam documents them; tests/test_reference_defaults.py EXPLAINED_DEPARTURES)
        "sam_resize": "sam", "peak_rule": "s2c", "confidence_source": "postprocessed",
    },
    "diagnostics": {"enabled": True, "n_images": 16, "every": 1},
}
MODEL_KEYS = tuple(CAM_DEFAULTS)  # backbone, pretrained, output_stride, freeze_bn, freeze_stem, feat_dim

# The paper's ablation rows (METHOD.md §6) as overrides of the keys above (their figures: PAPER_VOC_CAM).
ABLATIONS: dict[str, dict] = {
    "baseline": {"ssc": {"enabled": False}, "cpm": {"enabled": False}},          # Table 1
    "ssc_logit": {"ssc": {"level": "logit"}, "cpm": {"enabled": False}},         # Table 1
    "ssc_feature": {"ssc": {"level": "feature"}, "cpm": {"enabled": False}},     # Table 1
    "s2c": {},                                                                   # Table 1
    "cpm_only": {"ssc": {"enabled": False}},                                     # (not in the paper)
    # diagnostics, not in the paper: CPM from GT-instance points (needs GT masks), and CPM keeping
    # only the masks SAM itself rates well (SAM's automatic generator's own pred_iou_thresh)
    "cpm_oracle": {"ssc": {"enabled": False}, "cpm": {"prompts": "oracle"}},
    "cpm_sam_iou": {"ssc": {"enabled": False}, "cpm": {"min_pred_iou": 0.88}},
    "single_peak": {"cpm": {"single_peak": True}},                               # Table 2
    "no_confidence": {"cpm": {"confidence": "none"}},                            # Table 2
    "sam_confidence": {"cpm": {"confidence": "sam"}},                            # Table 2
    "cam_confidence": {"cpm": {"confidence": "cam"}},                            # (no SAM score)
    "no_background": {"cpm": {"loss": "l1"}},                                    # Table 2
}
#: CAM mIoU (VOC train) the paper reports for each ablation row (Tables 1 / 2; None: not reported).
PAPER_VOC_CAM: dict[str, float | None] = {
    "baseline": 50.1, "ssc_logit": 57.3, "ssc_feature": 63.2, "s2c": 76.1, "cpm_only": None, "cpm_oracle": None,
    "cpm_sam_iou": None, "single_peak": 73.0,
    "no_confidence": 72.7, "sam_confidence": 73.2, "cam_confidence": None, "no_background": 74.9,
}
#: SAM outputs ``cam.cpm.multimask_index`` may keep (s2c.sam.prompt.decode_prompts).
MULTIMASK_INDEX = (0, 1, 2, "best")
#: The allowed words of every enumerated ``cam`` key (the schema lists no enums of its own for them).
CAM_CHOICES: dict[tuple[str, ...], tuple] = {
    ("sam_mode",): ("cached", "online"),
    ("ssc", "level"): ("feature", "logit"),
    ("cpm", "prompt_cam"): ("step", "multiscale"),
    ("cpm", "prompts"): ("peaks", "oracle"),
    ("cpm", "alpha_sam"): ALPHA_SAM,
    ("cpm", "confidence"): CONFIDENCE,
    ("cpm", "background"): BACKGROUND,
    ("cpm", "loss"): LOSS_MODES,
    ("cpm", "batching"): ("pad", "group"),
    ("cpm", "sam_resize"): SAM_RESIZE,
    ("cpm", "peak_rule"): PEAK_RULES,
    ("cpm", "confidence_source"): CONFIDENCE_SOURCES,
}


def model_keys(cam: dict) -> dict:
    """The classifier's keys of a cam section (what :func:`s2c.models.build_classifier` takes)."""
    return {k: cam[k] for k in MODEL_KEYS if k in cam}


def overlay_cam(base: dict, over: dict) -> dict:
    """``over`` on the cam section ``base``: sub-sections (cpm, ssc, diagnostics) key by key,
    ``augment`` replaced whole (as :func:`resolve_cam` merges it)."""
    deep = lambda k, v: isinstance(v, dict) and isinstance(base.get(k), dict) and k != "augment"  # noqa: E731
    return {**base, **{k: ({**base[k], **v} if deep(k, v) else v) for k, v in over.items()}}


def check_augment(cam_cfg: dict) -> dict:
    """``cam.augment`` (passed whole to :class:`s2c.data.transforms.TrainAugment`) checked: unknown
    keys and bad values name ``cam.augment.<key>``. Returns the merged augmentation settings."""
    aug = cam_cfg.get("augment") or {}
    if not isinstance(aug, dict):
        raise S2CError(f"config key cam.augment must be a mapping of augmentation keys, got {aug!r}")
    merged = merge_section(AUG_DEFAULTS, aug, "cam.augment")
    try:
        augment_settings(merged)
    except S2CError as e:
        raise S2CError(f"config cam.augment: {e}") from None
    except (TypeError, ValueError) as e:
        raise S2CError(f"config cam.augment = {aug!r} is malformed ({e}); see s2c.defaults.AUG_DEFAULTS") from None
    return merged


def _positive_int_or_null(v, key: str, null_means: str) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise S2CError(f"{key} must be a positive integer or null ({null_means}), got {v!r}")


def resolve_cam(cfg: dict | None) -> dict:
    """The ``cam`` section over :data:`TRAIN_DEFAULTS` (+ its ``ablation``), validated.

    Model keys are filled from :data:`s2c.defaults.CAM_DEFAULTS` (the one place defining
    them) for :func:`s2c.models.build_classifier`; ``augment`` is kept as given (TrainAugment fills
    its defaults) after :func:`check_augment`.
    """
    cfg = dict(cfg or {})
    model = cfg_get({k: cfg.pop(k) for k in MODEL_KEYS if k in cfg}, CAM_DEFAULTS, "cam")
    out = merge_section(TRAIN_DEFAULTS, cfg, "cam", recurse=True, opaque={"augment"})
    if out["ablation"] is not None:
        if out["ablation"] not in ABLATIONS:
            raise S2CError(f"cam.ablation {out['ablation']!r} unknown; use one of {sorted(ABLATIONS)} or null")
        out = merge_section(out, ABLATIONS[out["ablation"]], "cam", recurse=True, opaque={"augment"})
    for path, allowed in CAM_CHOICES.items():
        v = out
        for p in path:
            v = v[p]
        if v not in allowed:
            raise S2CError(f"cam.{'.'.join(path)} = {v!r}; use one of {list(allowed)}")
    if isinstance(out["cpm"]["multimask_index"], str) and out["cpm"]["multimask_index"].strip().isdigit():
        out["cpm"]["multimask_index"] = int(out["cpm"]["multimask_index"])  # --config gives strings
    if out["cpm"]["multimask_index"] not in MULTIMASK_INDEX:
        raise S2CError(f"cam.cpm.multimask_index = {out['cpm']['multimask_index']!r}; use 0, 1, 2 or \"best\"")
    for k in ("epochs", "batch_size"):
        if not isinstance(out[k], int) or out[k] < 1:
            raise S2CError(f"cam.{k} must be a positive integer, got {out[k]!r}")
    if not isinstance(out["ssc"]["absent_prototypes"], bool):
        raise S2CError(f"cam.ssc.absent_prototypes must be true or false, got {out['ssc']['absent_prototypes']!r}")
    cpm = out["cpm"]
    if cpm["enabled"] and cpm["confidence_source"] == "lowres" and out["sam_mode"] != "online":
        raise S2CError("cam.cpm.confidence_source lowres needs cam.sam_mode online (the reference resizes the "
                       "low-res logits of the crop's own embedding); set sam_mode online or confidence_source "
                       "postprocessed")
    if cpm["start_step"] is not None and cpm["start_fraction"] is not None:
        raise S2CError("cam.cpm.start_step and cam.cpm.start_fraction are both set; keep one (the other null)")
    if cpm["start_step"] is not None and (not isinstance(cpm["start_step"], int) or cpm["start_step"] < 0):
        raise S2CError(f"cam.cpm.start_step must be an integer >= 0 or null, got {cpm['start_step']!r}")
    if cpm["start_fraction"] is not None and not (isinstance(cpm["start_fraction"], (int, float))
                                                  and 0 <= cpm["start_fraction"] <= 1):
        raise S2CError(f"cam.cpm.start_fraction must be a number in [0, 1] or null, got {cpm['start_fraction']!r}")
    mpi = cpm["min_pred_iou"]
    if mpi is not None and (isinstance(mpi, bool) or not isinstance(mpi, (int, float)) or not 0 <= mpi <= 1):
        raise S2CError(f"cam.cpm.min_pred_iou must be a number in [0, 1] or null, got {mpi!r}")
    if out["init"] is not None and (not isinstance(out["init"], str) or not out["init"].strip()):
        raise S2CError(f"cam.init must be the path of a train_cam model.pt or null, got {out['init']!r}")
    _positive_int_or_null(out["micro_batch"], "cam.micro_batch", "the whole batch")
    _positive_int_or_null(cpm["prompt_batch"], "cam.cpm.prompt_batch", "auto")
    check_augment(out)
    return {**out, **model}


# ------------------------------------------------------------------------ infer_cam / eval_cam
#: The ``infer_cam`` section (s2c.stages.infer_cam): test-time scales and flip of the CAM inference.
INFER_CAM_DEFAULTS: dict[str, Any] = {
    "scales": [0.5, 1.0, 1.5, 2.0],
    "flip": True,
}
#: The ``eval_cam`` section (s2c.stages.eval_cam): the background thresholds searched.
EVAL_CAM_DEFAULTS: dict[str, Any] = {
    "thresholds": list(DEFAULT_THRESHOLDS),
}


def resolve_infer_cam(cfg: dict | None) -> dict:
    return merge_section(INFER_CAM_DEFAULTS, cfg, "infer_cam")


def resolve_eval_cam(cfg: dict | None) -> dict:
    return merge_section(EVAL_CAM_DEFAULTS, cfg, "eval_cam")


# ------------------------------------------------------------------------------------- pseudo
#: ``pseudo.refine``: argmax, denseCRF, or SAM post-processing on the SE maps.
REFINEMENTS = ("none", "crf", "sam")
#: The ``pseudo`` section (s2c.stages.pseudo_labels documents every key).
PSEUDO_DEFAULTS: dict[str, Any] = {
    "threshold": None,   # None → the "threshold" of --threshold-json
    "refine": "none",
    "crf": dict(CRF_DEFAULTS),
    "sam": dict(SAM_POST_DEFAULTS),
}


def resolve_pseudo(cfg: dict | None) -> dict:
    """Merge the pseudo_labels section over PSEUDO_DEFAULTS (sub-sections too) and validate it."""
    cfg = dict(cfg or {})
    subs = ("crf", "sam")
    out = merge_section({k: v for k, v in PSEUDO_DEFAULTS.items() if k not in subs},
                        {k: v for k, v in cfg.items() if k not in subs}, "pseudo", ignore=subs)
    out["crf"] = merge_section(CRF_DEFAULTS, cfg.get("crf"), "pseudo.crf")
    out["sam"] = merge_section(SAM_POST_DEFAULTS, cfg.get("sam"), "pseudo.sam")
    if out["refine"] not in REFINEMENTS:
        raise S2CError(f"pseudo.refine: {out['refine']!r} is not one of {list(REFINEMENTS)}")
    return out


# ---------------------------------------------------------------------------------------- seg
#: The ``seg`` section (s2c.stages.train_seg; eval_seg has its own section, :data:`EVAL_SEG_DEFAULTS`).
SEG_TRAIN_DEFAULTS: dict[str, Any] = {
    # model: backbone, pretrained, output_stride, head, freeze_bn — defaults and meaning in
    # s2c.models.deeplab (resnet101 | resnet38d for GPUs, efficientnet_lite0 for CPU runs)
    **SEG_DEFAULTS,
    # schedule
    "epochs": 40,
    "batch_size": 16,                  # per process (per GPU under torchrun)
    "lr": 0.01,                        # backbone LR; the head gets lr * head_lr_mult
    "head_lr_mult": 10.0,
    "poly_power": 0.9,
    "weight_decay": 1e-4,
    "momentum": 0.9,
    # augmentation
    "crop_size": 512,
    "scale_range": [0.5, 2.0],         # random rescale factor of the whole image
    "flip": True,
    "jitter": None,                    # colour jitter [brightness, contrast, saturation, hue] or None
    # plumbing
    "num_workers": 4,
    "seed": 0,
    "amp": False,                      # mixed precision (CUDA only; ignored on CPU)
    "log_every": 10,                   # optimizer steps per log.csv row
}


def resolve_seg(cfg: dict | None) -> dict:
    """The full ``seg`` section: :data:`SEG_TRAIN_DEFAULTS` overlaid with ``cfg``, checked."""
    out = merge_section(SEG_TRAIN_DEFAULTS, cfg, "seg")
    for k in ("epochs", "batch_size", "crop_size", "log_every"):
        if isinstance(out[k], bool) or not isinstance(out[k], int) or out[k] < 1:
            raise S2CError(f"config key seg.{k} must be a positive integer, got {out[k]!r}")
    if not isinstance(out["scale_range"], (list, tuple)) or len(out["scale_range"]) != 2:
        raise S2CError(f"config key seg.scale_range must be [lo, hi], got {out['scale_range']!r}")
    if out["jitter"] is not None and (not isinstance(out["jitter"], (list, tuple)) or not 1 <= len(out["jitter"]) <= 4):
        raise S2CError(f"config key seg.jitter must be null or [brightness, contrast, saturation, hue], "
                       f"got {out['jitter']!r}")
    # plain JSON data: a tuple and a list compare equal on resume, and model.pt stays loadable anywhere
    return json.loads(json.dumps(out))


#: The ``eval_seg`` section (s2c.stages.eval_seg).
EVAL_SEG_DEFAULTS: dict[str, Any] = {
    "scales": [1.0],     # paper-style test-time augmentation: [0.5, 0.75, 1.0, 1.25, 1.5]
    "flip": False,       # also average the horizontally flipped image
    "crf": False,        # denseCRF post-processing: false, true (EVAL_SEG_CRF_DEFAULTS) or a dict overriding some
    "num_workers": 2,    # image-reading workers
    "amp": False,        # fp16 autocast (CUDA only). Off: with EfficientNet-Lite0, fp16 sets up its
                         # depthwise-conv kernels anew for every input shape, which on images of
                         # varied sizes costs more than fp16 saves; ResNet backbones do not pay this.
}


#: denseCRF (s2c.refine.crf.dense_crf) settings for segmentation probabilities: DeepLab's VOC
#: values (as in kazuto1011/deeplab-pytorch), not the CAM-refinement ones.
EVAL_SEG_CRF_DEFAULTS: dict[str, float] = {"iters": 10, "gauss_sxy": 1.0, "gauss_compat": 3.0,
                                           "bilateral_sxy": 67.0, "bilateral_srgb": 3.0, "bilateral_compat": 4.0}


def eval_seg_crf(crf_cfg: Any) -> dict | None:
    """eval_seg ``crf`` key → CRF keyword arguments, or None when disabled."""
    if crf_cfg is False or crf_cfg is None:
        return None
    if crf_cfg is True:
        return dict(EVAL_SEG_CRF_DEFAULTS)
    if isinstance(crf_cfg, dict):
        return merge_section(EVAL_SEG_CRF_DEFAULTS, crf_cfg, "eval_seg.crf")
    raise S2CError(f"config key eval_seg.crf must be false, true or a mapping with keys from "
                   f"{sorted(EVAL_SEG_CRF_DEFAULTS)}, got {crf_cfg!r}")


def resolve_eval_seg(cfg: dict | None) -> dict:
    out = merge_section(EVAL_SEG_DEFAULTS, cfg, "eval_seg")
    eval_seg_crf(out["crf"])
    return out


# ------------------------------------------------------------------------- schema defaults
#: The sections whose defaults the DAG build fills into the config itself (the rules pass them
#: filled; the other sections are passed as written and merged over their defaults by their stage).
#: The schema states no default for these keys: :func:`validate_workflow_config` takes them from
#: here (``data``'s required ``kind`` and ``root`` get none). Which sections are filled matters
#: only for the text of the rules' params: changing it would rerun finished jobs.
SCHEMA_DEFAULTS: dict[str, dict] = {
    "data": DATA_DEFAULTS,
    "sam": SAM_SECTION_DEFAULTS,
    "infer_cam": INFER_CAM_DEFAULTS,
    "pseudo": PSEUDO_DEFAULTS,
}


def validate_workflow_config(config: dict, schema_path=None) -> dict:
    """The DAG build's config check (``workflow/Snakefile``): :func:`s2c.config.validate_config`
    with the defaults of :data:`SCHEMA_DEFAULTS` filled in. Raises S2CError; returns ``config``."""
    return validate_config(config, schema_path, defaults=SCHEMA_DEFAULTS)


# ----------------------------------------------------------------------------------- registry
#: section name → resolver; :func:`resolve_sections` runs them all at DAG-build time.
RESOLVERS: dict[str, Callable[[dict], dict]] = {
    "cam": resolve_cam,
    "infer_cam": resolve_infer_cam,
    "eval_cam": resolve_eval_cam,
    "pseudo": resolve_pseudo,
    "seg": resolve_seg,
    "eval_seg": resolve_eval_seg,
}


def resolve_sections(config: dict[str, Any]) -> dict[str, dict]:
    """Each stage section merged over its defaults (ablations applied). Raises S2CError."""
    out = {}
    for section, resolve in RESOLVERS.items():
        cfg = config.get(section) or {}
        if not isinstance(cfg, dict):
            raise S2CError(f"config section {section!r} must be a mapping, got {type(cfg).__name__}")
        out[section] = resolve(cfg)
    # the ablation rows train with the cam section under the warm-up's overrides: a typo there
    # would otherwise surface only when the ablations target builds its DAG
    warmup = (config.get("ablations") or {}).get("warmup")
    if isinstance(warmup, dict) and warmup.get("cam"):
        try:
            resolve_cam(overlay_cam(config.get("cam") or {}, warmup["cam"]))
        except S2CError as e:
            raise S2CError(f"ablations.warmup.cam: {e}") from None
    return out


def cam_caches(cam: dict) -> set[str]:
    """The SAM caches the trainer of a resolved ``cam`` section (:func:`resolve_cam`) streams:
    ``"se"`` (segment-everything maps) for SSC, ``"embed"`` (image embeddings) for CPM on cached SAM;
    none for the L_CLS-only baseline or online SAM. The workflow asks this for a run's cache inputs
    and train_cam for the manifests it requires, so the two cannot disagree."""
    needs = {"se": cam["ssc"]["enabled"], "embed": cam["cpm"]["enabled"] and cam["sam_mode"] == "cached"}
    return {kind for kind, needed in needs.items() if needed}
