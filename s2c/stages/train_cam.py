"""The S2C CAM classifier, L = L_CLS + L_SSC + L_CPM (METHOD.md §2, §4, §5).

    s2c train_cam --data-cfg JSON --split train_aug --embed-manifest cache/embed.json \\
        --se-manifest cache/se.json --out results/cam --weights-dir weights \\
        --cfg '{}' --sam-cfg '{"model_type": "vit_t"}' --device auto
    torchrun --nproc_per_node 4 -m s2c.stages.train_cam ...            # DDP, one GPU per process

Outputs in ``--out`` (the convention of :class:`s2c.train_utils.TrainingRun`, shared with
train_seg): ``last.pt`` (resumable checkpoint, each epoch), ``losses.csv`` (every step, every loss
term; ``step`` = optimizer steps completed, from 1), ``losses.png``, ``cpm_diag.csv`` (with
L_CPM and GT masks), ``cpm_diag.png`` (its plot, or a note saying why there are no diagnostics) and, written last and atomically, ``model.pt`` =
``{"model": state_dict, "cam_cfg": cfg, "num_classes": C, "class_set": str}``. A rerun after a
kill continues from the last completed epoch (same augmentation stream, optimizer and RNG state).

Config — the ``cam`` section (defaults in :data:`s2c.sections.TRAIN_DEFAULTS`, allowed words in
:data:`s2c.sections.CAM_CHOICES`; model keys ``backbone``,
``pretrained``, ``output_stride``, ``freeze_bn``, ``freeze_stem``, ``feat_dim`` are documented
in :mod:`s2c.models.classifier`):

========================  ==========  ==================================================================
key                       default     meaning
========================  ==========  ==================================================================
epochs                    40          reference code 40 (paper 6)
batch_size                8           per process
lr                        0.02        base LR (backbone); new layers get ``lr_mult_new`` ×
lr_mult_new               1.0         LR multiplier of the from-scratch layers (reference 1×: its
                                      ``from_scratch_layers`` is empty, METHOD.md §2)
weight_decay              5e-4
momentum                  0.0         SGD momentum (the reference's PolyOptimizer passes none)
poly_power                0.9         poly LR decay power
seed                      0
num_workers               2           DataLoader workers (caches open lazily in each)
amp                       false       bfloat16 autocast on CUDA (ignored on CPU)
channels_last             false       the classifier in channels-last memory: same arithmetic, other kernels;
                                      on 2 CPU cores at OS32 1.2× faster steps, 1.3× faster prompting CAMs
                                      (bench/train_step.py --channels-last), at OS16 1.1× slower (dilated
                                      depthwise convs); results equal to rounding
micro_batch               null        images per forward/backward, gradients accumulated over the batch's
                                      slices (each loss weighted by its slice's share of the images);
                                      null = the whole batch. On 2 CPU cores (activations stay in cache),
                                      baseline step at OS32: 1.00 → 0.62 s with 2 + channels_last; at
                                      OS16: 1.51 → 1.29 s with 2 (bench/train_step.py --micro-batch).
                                      Not the same numbers: drop-connect draws differ, and SSC / CPM
                                      average pixels per slice. With ``freeze_bn: false`` BatchNorm
                                      statistics come from the slice
augment                   {}          :class:`s2c.data.transforms.TrainAugment` keys (reference defaults)
sam_mode                  cached      ``cached``: decoder-only on the embedding cache; ``online``: encode
                                      every augmented crop with SAM, as the reference does (no cache;
                                      its resize: ``cpm.sam_resize``)
ablation                  null        a row of the paper's Tables 1/2, see :data:`ABLATIONS`; applied
                                      over the keys below
init                      null        a train_cam ``model.pt`` to start from instead of the ImageNet
                                      weights (same backbone, output stride, feat_dim and class set):
                                      a shared warm-up checkpoint (``ablations.warmup``). Optimizer,
                                      LR schedule and CPM start count from this run's step 0
ssc.enabled               true        L_SSC on
ssc.level                 feature     ``feature`` (F, the paper) | ``logit`` (the CAMs; Table 1 row 2)
ssc.temperature           1.0         divisor of the cosines (reference ≡ 1: it multiplies by T = 1;
                                      paper 0.5)
ssc.unassigned_prototype  true        the unassigned (and padding) pixels' mean as an extra negative
                                      prototype, as the reference's scatter over segment 0 does
ssc.size                  null        side at which SSC is computed: null = the crop (paper/reference);
                                      e.g. 128 on 256 crops is ~4× cheaper (SE map subsampled, nearest)
ssc.weight                1.0
ssc.absent_prototypes     false       a departure from the reference, explained: ``true`` = its
                                      scatter_mean's prototypes, every id up to the batch's largest
                                      (the slice's, with ``micro_batch``),
                                      one absent from an image a zero vector (logit 0, adding exp(0) = 1
                                      to each anchor's softmax denominator); ``false`` leaves absent ids
                                      out, so an image's loss does not depend on the other images'
                                      segment counts. Limitation: the reference re-indexes ids before
                                      cropping, s2c per crop (s2c.data.cam_train.reindex_np), so in
                                      training the absent ids still differ from the reference's with
                                      ``true``; on the same SE maps the step is the reference's
                                      (bench/reference_parity.py)
cpm.enabled               true        L_CPM on
cpm.start_epoch           2           first (0-based) epoch with L_CPM (reference ``sstart`` 2; paper:
                                      off for the first epoch only); used when the two keys below are null
cpm.start_step            null        first optimizer step with L_CPM (overrides start_epoch); the paper
                                      waits ≈ 1.3k steps (one VOC epoch), the reference ≈ 2.6k
cpm.start_fraction        null        first step with L_CPM as a fraction of the whole schedule (paper
                                      ≈ 1/6): a small dataset then never switches CPM on after a few
                                      dozen steps. At most one of start_step / start_fraction
cpm.prompt_cam            multiscale  ``multiscale``: no-grad eval-mode CAMs at ``cpm.scales``, summed (the
                                      reference's prompting CAM); ``step``: this step's CAMs, detached
                                      (a departure: no extra forwards, fewer peaks on their object)
cpm.scales                [.5,1,1.5,2]  the reference's; fewer scales are a cheaper departure
cpm.prompt_batch          null        images per no-grad forward of the multiscale prompting CAM; null =
                                      1 on CPU (~2× faster there than the whole batch: bench/train_step.py),
                                      the whole batch on GPU. The same CAMs (eval mode, frozen BN: images are independent)
cpm.min_distance          20          peak spacing in crop pixels (reference, 256 crops)
cpm.threshold             0.5         τ for local peaks (the global max is always a prompt)
cpm.single_peak           false       only the global max (Table 2 "single peak")
cpm.prompts               peaks       where the points come from: ``peaks`` of the prompting CAM (the
                                      method) | ``oracle``: one interior point per GT instance of each
                                      labelled class (s2c.losses.oracle; needs GT masks: a diagnostic)
cpm.min_pred_iou          null        drop a class's SAM mask when SAM's predicted IoU is below this
                                      (a departure, not in the paper: prompts that miss their object
                                      tend to give masks SAM itself rates low)
cpm.exclude_border        true        drop local peaks within min_distance of the border (peak_local_max)
cpm.multimask_index       2           SAM output kept (reference 2, the largest), or "best"
cpm.alpha_sam             logits      α_sam: ``logits`` (reference) | ``sigmoid`` | ``stability``
cpm.confidence            both        α = ``both`` α_sam·α_cam | ``sam`` | ``cam`` | ``none``
cpm.background            uncovered   ``uncovered`` (reference) | ``tau`` (paper eq. 11, max_c α < cpm.tau)
cpm.tau                   0.5
cpm.loss                  ce          ``ce`` over [1 − max A; A] | ``l1`` to class masks (Table 2 "no bg map")
cpm.batching              pad         decoder batching of one image's classes (s2c.sam.prompt)
cpm.weight                1.0
cpm.sam_resize            sam         SAM's input in ``sam_mode: online`` (no effect in cached mode,
                                      whose embedding is of the original image): ``sam`` = the crop
                                      rounded to uint8, SAM's ResizeLongestSide (PIL, antialiased);
                                      ``reference`` = the authors' float crop × 255 squashed to 1024²
                                      (bilinear, align_corners=True) and truncated to uint8, prompts and
                                      masks in that squashed frame. ``sam`` departs on purpose: it is
                                      SamPredictor's preprocessing, the one the cached embeddings have
cpm.peak_rule             s2c         ``s2c``: :func:`s2c.losses.find_peaks` (a peak is the CAM's own
                                      maximum; the strongest local peak is kept); ``reference``:
                                      :func:`s2c.losses.find_peaks_reference`, the authors' rule with its
                                      quirks (the top-left pixel of the 3×3 max-filter plateau, τ tested
                                      there, its first local peak dropped even when the global max is
                                      not one of them: accidents of its code, which ``s2c`` avoids)
cpm.confidence_source     postprocessed  the SAM logits α_sam comes from: ``postprocessed`` (the mask's
                                      own logits, so a covered pixel never scores < 0) | ``lowres``
                                      (the reference: SAM's 256² logits resized straight to the crop, the
                                      mask still from the post-processed ones; where the two disagree in
                                      sign a covered pixel scores < 0 and is background). ``lowres``
                                      needs ``sam_mode: online`` (an S2CError in cached mode)
diagnostics.enabled       true        per epoch, on a fixed sample of training images with GT masks: CPM's
                                      peak hit rate vs chance, Ŝ mIoU, prompting-CAM mIoU → cpm_diag.csv/png
                                      (s2c.cpm_diagnostics; only when L_CPM is on and the split has masks)
diagnostics.n_images      16          images in the sample
diagnostics.every         1           run them every N epochs (and after the last one)
========================  ==========  ==================================================================

``--sam-cfg``: ``{"model_type": vit_t|vit_b|vit_l|vit_h|vit_test, "checkpoint": path|null}``; the
decoder must come from the checkpoint that built the embedding cache (checked).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .. import train_utils as tu
from ..cli import parse_json_arg
from ..cpm_diagnostics import DIAG_EPOCH, pick_sample, run_diagnostics
from ..cpm_diagnostics import FIELDS as DIAG_FIELDS
from ..data import open_dataset
from ..data.cam_train import CAMTrainDataset, collate
from ..data.transforms import Geometry, denormalize, denormalize_255
from ..errors import S2CError, cli_main
from ..io import ensure_writable_dir, sha256_file
from ..losses import (cls_loss, cpm_loss, cpm_pseudo_label, find_peaks, find_peaks_reference,
                     multiscale_prompt_cams, normalize_cams, oracle_prompts, ssc_loss)
from ..models import build_classifier, cam_checkpoint, read_cam_checkpoint
from ..plots import note_figure, plot_csv
from ..sam import prompt as sam_prompt
from ..sam.build import DEFAULT_MODEL_TYPE, load_sam
from ..sam.cache import EmbeddingReader, SEMapReader
from ..sections import ABLATIONS, MODEL_KEYS, PAPER_VOC_CAM, TRAIN_DEFAULTS, cam_caches
from ..sections import resolve_cam as resolve_cfg

__all__ = ["TRAIN_DEFAULTS", "MODEL_KEYS", "ABLATIONS", "PAPER_VOC_CAM", "resolve_cfg", "cpm_start_step",
           "prompt_batch", "prompting_cams", "cpm_peaks", "cpm_targets", "compute_losses", "init_from", "train_cam", "main"]

log = logging.getLogger(__name__)

LOSS_FIELDS = ["step", "epoch", "lr", "loss", "loss_cls", "loss_ssc", "loss_cpm", "step_time"]


def cpm_start_step(cpm: dict, steps_per_epoch: int, total_steps: int) -> int:
    """The first optimizer step (0-based) that trains with L_CPM: ``start_step`` if set, else
    ``ceil(start_fraction × total_steps)``, else ``start_epoch × steps_per_epoch``."""
    if cpm["start_step"] is not None:
        return int(cpm["start_step"])
    if cpm["start_fraction"] is not None:
        return int(math.ceil(float(cpm["start_fraction"]) * total_steps - 1e-9))
    return int(cpm["start_epoch"]) * steps_per_epoch


# ----------------------------------------------------------------------------------------- CPM
def prompt_batch(cpm: dict, device: torch.device) -> int | None:
    """Images per prompting-CAM forward: ``cpm.prompt_batch``, else 1 on CPU (where the 2× upscaled
    batch of 8 runs ~2× slower in one call than image by image: it falls out of cache), else all."""
    if cpm["prompt_batch"] is not None:
        return int(cpm["prompt_batch"])
    return 1 if device.type == "cpu" else None


@torch.no_grad()
def prompting_cams(net, x: torch.Tensor, labels: torch.Tensor, cpm: dict,
                   step_cam: torch.Tensor | None = None) -> torch.Tensor:
    """The CAM that CPM takes its peaks from, (B, C, H, W) in [0, 1], no gradient.

    ``cpm.prompt_cam`` ``step``: ``step_cam`` (this step's normalised CAMs) detached, or without it
    one forward of ``net`` as it is; ``multiscale``: eval-mode forwards at ``cpm.scales`` (the
    reference), ``prompt_batch`` images at a time, then ``net``'s mode is restored.
    """
    if cpm["prompt_cam"] == "step":
        return (step_cam if step_cam is not None else normalize_cams(net(x)["cams"].float(), labels,
                                                                     x.shape[-2:])).detach()
    was_training = net.training
    net.eval()  # the reference takes its prompting CAM in eval mode
    try:
        return multiscale_prompt_cams(lambda im: net(im)["cams"], x, labels, cpm["scales"],
                                      prompt_batch(cpm, x.device))
    finally:
        net.train(was_training)


def cpm_peaks(prompt_cam: torch.Tensor, batch: dict, cpm: dict) -> list[list[tuple[int, torch.Tensor]]]:
    """:func:`s2c.losses.find_peaks` of ``prompt_cam`` (B, C, h, w) with the ``cpm`` section's
    settings, inside each crop's valid area: per image [(class, points (K, 2) (x, y))]. With
    ``cpm.peak_rule: reference``, :func:`s2c.losses.find_peaks_reference` (the authors' rule) with the
    same settings. With ``cpm.prompts: oracle`` the points come from the batch's GT masks instead
    (``batch["gt"]``)."""
    if cpm["prompts"] == "oracle":
        return oracle_prompts(batch["gt"], batch["labels"])
    rule = find_peaks_reference if cpm["peak_rule"] == "reference" else find_peaks
    return rule(prompt_cam, batch["labels"], cpm["min_distance"], cpm["threshold"], cpm["single_peak"],
                batch["valid"], cpm["exclude_border"])


@torch.no_grad()
def cpm_targets(sam, batch: dict, prompt_cam: torch.Tensor, cpm: dict, mode: str) -> torch.Tensor:
    """Pseudo-labels Ŝ (B, h, w) long (0 bg, c+1 class c, 255 padding) for a batch of crops.

    Peaks of ``prompt_cam`` (B, C, h, w) → one multi-point prompt per present class → SAM. ``cached``:
    peaks go back to original-image coordinates, the decoder runs on the cached embedding of the
    original image, its logits are warped into the crop. ``online``: each crop is encoded: with
    ``cpm.sam_resize: sam`` rounded to uint8 and resized by SAM's ResizeLongestSide, with
    ``reference`` squashed to 1024² and truncated as the authors' code does
    (:func:`s2c.sam.prompt.encode_squashed`). ``cpm.confidence_source: lowres`` (online only, an
    S2CError in cached mode) takes α_sam from SAM's low-res logits resized straight to the crop.
    """
    labels, valid = batch["labels"], batch["valid"]
    B, _, h, w = prompt_cam.shape
    lowres = cpm["confidence_source"] == "lowres"
    if lowres and mode != "online":
        raise S2CError("cam.cpm.confidence_source lowres needs cam.sam_mode online (the cached embedding is of "
                       "the whole original image, not the crop the reference resizes its low-res logits to)")
    peaks = cpm_peaks(prompt_cam, batch, cpm)
    squash = mode == "online" and cpm["sam_resize"] == "reference"
    side = sam.image_encoder.img_size if squash or lowres else 1024  # SAM's input frame
    if mode == "online":
        # (B, 256, 64, 64): the reference's cost
        emb = (sam_prompt.encode_squashed(sam, denormalize_255(batch["image"])) if squash
               else sam_prompt.encode_images(sam, list(denormalize(batch["image"]))))
    target = torch.empty(B, h, w, dtype=torch.long, device=prompt_cam.device)
    for b in range(B):
        classes = torch.tensor([c for c, _ in peaks[b]], dtype=torch.long, device=prompt_cam.device)
        if cpm["prompts"] == "oracle" and bool((batch["gt"][b] == 255).all()):
            target[b] = 255  # no GT mask for this image: no oracle, no CPM target
            continue
        if classes.numel() == 0:
            target[b] = cpm_pseudo_label(prompt_cam[b], classes, prompt_cam.new_zeros(0, h, w), valid[b])
            continue
        # SAM's prompt encoder takes pixel indices (it adds 0.5 itself); peaks are pixel centres
        pts = [p.cpu().numpy() for _, p in peaks[b]]
        alpha = None
        if mode == "online":
            idx = [p - 0.5 for p in pts]
            if squash:  # prompts and low-res logits live in the squashed side² frame
                frame = (side, side)
                idx, size = [sam_prompt.squashed_points(p, (h, w), side) for p in idx], frame
            else:
                frame, size = sam_prompt.sam_input_size((h, w), side), (h, w)
            lowres_out = squash or lowres  # then post-processed here, as decode_prompts would
            out, iou = sam_prompt.decode_prompts(sam, emb[b], idx, size, frame, cpm["multimask_index"],
                                                 return_lowres=lowres_out, batching=cpm["batching"])
            logits = sam_prompt.lowres_to_size(out, frame, (h, w), side) if lowres_out else out
            if lowres:
                alpha = sam_prompt.lowres_straight(out, frame, (h, w), side)
        else:
            geo = batch["geometry"][b]
            orig = tuple(batch["orig_size"][b].tolist())
            logits, iou = sam_prompt.decode_prompts(sam, batch["embedding"][b],
                                                  [geo.points_to_orig(p) - 0.5 for p in pts], orig,
                                                  tuple(batch["input_size"][b].tolist()), cpm["multimask_index"],
                                                  batching=cpm["batching"])
            logits = geo.warp_to_crop_torch(logits, "bilinear", fill=-20.0)  # padding: confidently "no mask"
        if cpm["min_pred_iou"] is not None:
            keep = (iou >= float(cpm["min_pred_iou"])).to(classes.device)
            classes, logits = classes[keep], logits[keep.to(logits.device)]
            alpha = None if alpha is None else alpha[keep.to(alpha.device)]
        target[b] = cpm_pseudo_label(prompt_cam[b], classes, logits.to(prompt_cam.device), valid[b],
                                     cpm["alpha_sam"], cpm["confidence"], cpm["background"], cpm["tau"],
                                     None if alpha is None else alpha.to(prompt_cam.device))
    return target


def compute_losses(model, batch: dict, cfg: dict, sam=None, use_cpm: bool = False) -> dict[str, torch.Tensor]:
    """All loss terms of one step. Returns {"loss", "loss_cls", "loss_ssc", "loss_cpm"} (scalars)."""
    x, labels = batch["image"], batch["labels"]
    out = model(x)
    zero = out["logits"].sum() * 0.0
    parts = {"loss_cls": cls_loss(out["logits"], labels), "loss_ssc": zero, "loss_cpm": zero}
    ssc, cpm = cfg["ssc"], cfg["cpm"]
    if ssc["enabled"]:
        maps = out["feats"] if ssc["level"] == "feature" else out["cams"]
        se = batch["se"]
        if ssc["size"] and ssc["size"] < max(se.shape[-2:]):
            f = ssc["size"] / max(se.shape[-2:])
            size = (max(1, round(se.shape[-2] * f)), max(1, round(se.shape[-1] * f)))
            se = F.interpolate(se[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()
        parts["loss_ssc"] = ssc["weight"] * ssc_loss(maps, se, ssc["temperature"], ssc["unassigned_prototype"],
                                                     ssc["absent_prototypes"])
    if use_cpm:
        cam = normalize_cams(out["cams"].float(), labels, x.shape[-2:])
        prompt_cam = prompting_cams(tu.unwrap(model), x, labels, cpm, step_cam=cam)
        target = cpm_targets(sam, batch, prompt_cam, cpm, cfg["sam_mode"])
        parts["loss_cpm"] = cpm["weight"] * cpm_loss(cam, target, labels, cpm["loss"])
    parts["loss"] = parts["loss_cls"] + parts["loss_ssc"] + parts["loss_cpm"]
    return parts


# ---------------------------------------------------------------------------------------- setup
def load_sam_for_training(sam_cfg: dict, weights_dir, device) -> tuple[Any, str]:
    """(frozen sam on device, checkpoint sha256) from ``{"model_type", "checkpoint"}``."""
    sam_cfg = sam_cfg or {}
    sam, sha = load_sam(sam_cfg.get("model_type", DEFAULT_MODEL_TYPE), sam_cfg.get("checkpoint"), weights_dir,
                        str(device))
    sam.requires_grad_(False)
    return sam, sha


def build_dataset(data_cfg: dict, split: str, cfg: dict, embed_manifest=None, se_manifest=None,
                  embed_expect: dict | None = None):
    """(CAMTrainDataset, SegDataset); caches are checked against the image list (and the SAM)."""
    ds = open_dataset(data_cfg, split)
    h = ds.image_list_hash()
    se = emb = None
    caches = cam_caches(cfg)
    if "se" in caches:
        if se_manifest is None:
            raise S2CError("cam.ssc.enabled needs --se-manifest (the sam_everything cache); or set cam.ssc.enabled false")
        se = SEMapReader(se_manifest, {"image_list_hash": h})
    if "embed" in caches:
        if embed_manifest is None:
            raise S2CError("cam.cpm with sam_mode cached needs --embed-manifest (the sam_embed cache); "
                           "or set cam.sam_mode online")
        emb = EmbeddingReader(embed_manifest, {"image_list_hash": h, **(embed_expect or {})})
    gt = cfg["cpm"]["enabled"] and cfg["cpm"]["prompts"] == "oracle"
    if gt and not pick_sample(ds, 1):
        raise S2CError(f"cam.cpm.prompts oracle needs GT masks, and no image of split {split!r} has one; "
                       "use cam.cpm.prompts peaks")
    return CAMTrainDataset(ds, cfg["augment"], emb, se, cfg["seed"], gt_masks=gt), ds


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k != "orig_size"
                and k != "input_size" else v) for k, v in batch.items()}


def init_from(model: torch.nn.Module, cfg: dict, num_classes: int, class_set: str | None) -> None:
    """Load ``cfg["init"]`` (a train_cam model.pt) into ``model``, which was built from ``cfg``.

    The checkpoint must come from the same architecture (backbone, output stride, feat_dim) and
    class set; S2CError naming the file and the differing keys otherwise.
    """
    path = cfg["init"]
    ckpt = read_cam_checkpoint(path)
    theirs = ckpt["cam_cfg"] or {}
    differ = [f"{k}: {theirs.get(k)!r} there, {cfg[k]!r} here" for k in ("backbone", "output_stride", "feat_dim")
              if k in cfg and theirs.get(k, cfg[k]) != cfg[k]]
    if int(ckpt["num_classes"]) != num_classes:
        differ.append(f"num_classes: {ckpt['num_classes']} there, {num_classes} here")
    if class_set and ckpt.get("class_set") and ckpt["class_set"] != class_set:
        differ.append(f"class_set: {ckpt['class_set']!r} there, {class_set!r} here")
    if differ:
        raise S2CError(f"cam.init {path} was trained with another model ({'; '.join(differ)}); "
                       "warm-start only from a run of the same cam model keys and class set")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise S2CError(f"cam.init {path} does not fit this model ({str(e).splitlines()[0]})") from None
    log.info("cam.init: starting from %s", path)


# ---------------------------------------------------------------------------------------- train
def train_cam(data_cfg: dict, split: str, out: str | os.PathLike, weights_dir: str | os.PathLike = "weights",
              cfg: dict | None = None, sam_cfg: dict | None = None, embed_manifest=None, se_manifest=None,
              device: str = "auto", on_epoch_end: Callable[[int, dict], bool | None] | None = None,
              progress: bool = True, model: torch.nn.Module | None = None) -> Path | None:
    """Train (or resume) the CAM classifier; returns ``<out>/model.pt`` (None when stopped early).

    ``on_epoch_end(epoch, {"loss": mean epoch loss, "step": steps done})`` runs after each epoch's
    checkpoint on every rank; a true return value ends training there (checkpoint kept, no
    model.pt): an early stop, or a stand-in for a killed job in tests. ``model`` replaces the one
    :func:`s2c.models.build_classifier` would build (tiny models in tests; it must have the
    CAMClassifier interface, and model.pt then only loads into the same architecture).
    """
    cfg = resolve_cfg(cfg)
    out = ensure_writable_dir(out)
    dev = tu.select_device(device)
    rank, world, _ = tu.ddp_init("nccl" if dev.type == "cuda" else "gloo")
    try:
        return _train(data_cfg, split, out, weights_dir, cfg, sam_cfg, embed_manifest, se_manifest, dev,
                      on_epoch_end, progress, model, rank, world)
    finally:
        tu.ddp_cleanup()


def _train(data_cfg, split, out: Path, weights_dir, cfg, sam_cfg, embed_manifest, se_manifest, dev, on_epoch_end,
           progress, model, rank: int, world: int) -> Path | None:
    tu.seed_everything(cfg["seed"] + rank)
    use_sam = cfg["cpm"]["enabled"]
    sam, sha = load_sam_for_training(sam_cfg or {}, weights_dir, dev) if use_sam else (None, None)
    embed_expect = {"model_type": sam.model_type, "checkpoint_sha256": sha} if use_sam else None
    data, ds = build_dataset(data_cfg, split, cfg, embed_manifest, se_manifest, embed_expect)
    if model is None:
        model = build_classifier({k: cfg[k] for k in MODEL_KEYS if k in cfg}, ds.num_classes, weights_dir)
    if cfg["init"] is not None:
        init_from(model, cfg, ds.num_classes, ds.class_set)
    model = model.to(dev)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)  # inputs follow the weights' layout
    opt = torch.optim.SGD(model.param_groups(cfg["lr_mult_new"]), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    loader, sampler = _make_loader(data, cfg, dev, rank, world, split)
    epochs, total = cfg["epochs"], len(loader) * cfg["epochs"]
    cpm_from = _cpm_from(cfg["cpm"], len(loader), total)
    diag, diag_off = _diagnostics(model, sam, data, ds, cfg, dev) if tu.is_main() else (None, None)
    # Resume only a run over the same config and inputs (a killed job); a job rerun because its
    # config, image list or caches changed starts from scratch.
    identity = {"cfg": {k: v for k, v in cfg.items() if k != "num_workers"},
                "inputs": {"images": ds.image_list_hash(),
                           "caches": tu.inputs_fingerprint(embed_manifest, se_manifest),
                           **({"init": sha256_file(cfg["init"])} if cfg["init"] is not None else {})}}
    run = tu.TrainingRun(out, identity, LOSS_FIELDS, world, ["loss", "loss_cls", "loss_ssc", "loss_cpm"],
                         title=f"train_cam ({split})")
    start_epoch, step = run.resume(model, opt, rank=rank)
    model = tu.wrap_ddp(model, dev, world)
    amp = cfg["amp"] and dev.type == "cuda"
    diag_log = (tu.CSVLogger(out / "cpm_diag.csv", DIAG_FIELDS, resume_step=step + 1 if run.resumed else None)
                if diag is not None else None)
    model.train()
    try:
        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch)
            data.set_epoch(epoch)
            losses = []
            for batch in tqdm(loader, desc=f"train_cam epoch {epoch + 1}/{epochs}",
                              disable=not (progress and tu.is_main())):
                t0 = time.perf_counter()
                for g in opt.param_groups:
                    g["lr"] = tu.poly_lr(cfg["lr"], step, total, cfg["poly_power"]) * g["lr_mult"]
                opt.zero_grad(set_to_none=True)
                parts: dict[str, torch.Tensor] = {}
                slices = tu.micro_batches(_to(batch, dev), cfg["micro_batch"])
                for i, (mb, share) in enumerate(slices):
                    # DDP: gradients are all-reduced once, after the last slice
                    sync = model.no_sync() if world > 1 and i < len(slices) - 1 else contextlib.nullcontext()
                    with sync:
                        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                            mb_parts = compute_losses(model, mb, cfg, sam, use_cpm=use_sam and step >= cpm_from)
                        (mb_parts["loss"] * share).backward()
                    for k, v in mb_parts.items():
                        parts[k] = parts[k] + v.detach() * share if k in parts else v.detach() * share
                # a non-finite loss stops the job before the optimizer applies its gradients
                losses.append(tu.finite_loss(parts["loss"], "train_cam", "lower cam.lr or disable cam.amp"))
                opt.step()
                step += 1
                row = {k: float(tu.all_reduce_mean(v.detach())) for k, v in parts.items()}  # every rank: a collective
                run.log({"step": step, "epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                         "step_time": round(time.perf_counter() - t0, 4), **row})
            if diag_log is not None and ((epoch + 1) % max(1, int(cfg["diagnostics"]["every"])) == 0
                                         or epoch + 1 == epochs):
                _log_diagnostics(diag, diag_log, out, split, epoch + 1, step)
            run.end_epoch(epoch + 1, step, model, opt, cfg=cfg)
            if on_epoch_end is not None and on_epoch_end(epoch + 1, {"loss": sum(losses) / max(len(losses), 1),
                                                                     "step": step}):
                return None
    finally:
        run.close()
        if diag_log is not None:
            diag_log.close()
    if diag_off is not None:  # the report's diagnostics entry then says why there are none
        note_figure(out / "cpm_diag.png", "CPM diagnostics", f"No CPM diagnostics in this run: {diag_off}.")
    net = tu.unwrap(model)
    return run.finish(cam_checkpoint(net, cfg, ds.num_classes, ds.class_set))


def _make_loader(data, cfg: dict, dev: torch.device, rank: int, world: int, split: str):
    """(loader, sampler): each process takes its share of a seeded shuffle, full batches only."""
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=cfg["seed"], drop_last=True)
    if len(data) // world < cfg["batch_size"]:
        raise S2CError(f"split {split!r} has {len(data)} images: fewer than cam.batch_size={cfg['batch_size']} "
                       f"per process × {world}; lower cam.batch_size")
    loader = DataLoader(data, cfg["batch_size"], sampler=sampler, num_workers=cfg["num_workers"],
                        collate_fn=collate, drop_last=True, pin_memory=dev.type == "cuda",
                        persistent_workers=False)
    return loader, sampler


def _cpm_from(cpm: dict, steps_per_epoch: int, total: int) -> int:
    """The first step with L_CPM (:func:`cpm_start_step`), logged; a warning when it never comes."""
    cpm_from = cpm_start_step(cpm, steps_per_epoch, total)
    if cpm["enabled"]:
        log.info("L_CPM from step %d of %d (%d steps per epoch)", cpm_from, total, steps_per_epoch)
        if cpm_from >= total:
            log.warning("cam.cpm starts at step %d but the schedule has only %d steps: CPM never runs",
                        cpm_from, total)
    return cpm_from


def _log_diagnostics(diag, diag_log, out: Path, split: str, epoch: int, step: int) -> None:
    row = {"epoch": epoch, "step": step, **diag()}
    diag_log.log(row)
    log.info("CPM diagnostics after epoch %d: %s", epoch, row)
    plot_csv(out / "cpm_diag.csv", out / "cpm_diag.png", ["peak_hit_rate", "peak_chance", "pseudo_miou", "prompt_cam_miou"],
             title=f"CPM diagnostics ({split}, {row['n_images']} images)")


def _diagnostics(model, sam, data, ds, cfg: dict, dev):
    """(a () → row callable for :func:`s2c.cpm_diagnostics.run_diagnostics`, None), or (None, why
    they are off): disabled, no L_CPM, or no training image with a GT mask."""
    dcfg, cpm = cfg["diagnostics"], cfg["cpm"]
    if not cpm["enabled"]:
        return None, f"L_CPM is off (cam.cpm.enabled false; cam.ablation {cfg['ablation']})"
    if not dcfg["enabled"] or int(dcfg["n_images"]) < 1:
        return None, "cam.diagnostics.enabled is false (or n_images is 0)"
    sample = pick_sample(ds, int(dcfg["n_images"]), cfg["seed"])
    if not sample:
        log.info("CPM diagnostics off: no training image of %s has a GT mask", ds.split)
        return None, f"no training image of split {ds.split!r} has a GT mask to score CPM's peaks and labels on"
    view = CAMTrainDataset(ds, cfg["augment"], data.embed, data.se, cfg["seed"], gt_masks=data.gt_masks)
    view.set_epoch(DIAG_EPOCH)

    fixed: list = []  # the sample's crops never change: read images, caches and masks once

    def batch_of():
        if not fixed:
            items = [view[i] for i in sample]
            gts = [Geometry.from_dict(it["geometry"]).warp_to_crop(ds.load_mask(it["id"]), "nearest", fill=255)
                   for it in items]
            fixed.extend((_to(collate(items), dev), gts))
        return fixed[0], fixed[1]

    net = tu.unwrap(model)

    def prompt_cams(batch):
        return prompting_cams(net, batch["image"], batch["labels"], cpm)

    def peaks_of(batch, pc):
        return cpm_peaks(pc, batch, cpm)

    def targets(batch, pc):
        return cpm_targets(sam, batch, pc, cpm, cfg["sam_mode"])

    return (lambda: run_diagnostics(net, batch_of, prompt_cams, targets, peaks_of, ds.num_classes)), None


# ---------------------------------------------------------------------------------------- CLI
@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c train_cam", description=__doc__.split("\n")[0])
    p.add_argument("--data-cfg", required=True, help="the config's data section as JSON (or @file.json)")
    p.add_argument("--split", required=True, help="training split, e.g. train_aug")
    p.add_argument("--embed-manifest", type=Path, default=None, help="SAM embedding cache (manifest or store)")
    p.add_argument("--se-manifest", type=Path, default=None, help="segment-everything cache (manifest or store)")
    p.add_argument("--out", type=Path, required=True, help="output dir: last.pt, losses.csv/png, model.pt")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"), help="backbone / SAM weights folder")
    p.add_argument("--cfg", default="{}", help="the config's cam section as JSON (keys: see module doc)")
    p.add_argument("--sam-cfg", default="{}", help='{"model_type": ..., "checkpoint": ...} of the SAM decoder')
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    final = train_cam(parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.out, a.weights_dir,
                      parse_json_arg(a.cfg, "--cfg"), parse_json_arg(a.sam_cfg, "--sam-cfg"),
                      a.embed_manifest, a.se_manifest, a.device, progress=not a.no_progress)
    if tu.is_main() and final is not None:
        print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
