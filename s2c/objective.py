"""The S2C objective of one training step: L = L_CLS + L_SSC + L_CPM (METHOD.md §2, §4, §5).

The pieces the trainer (:mod:`s2c.stages.train_cam`), the CPM diagnostics
(:mod:`s2c.cpm_diagnostics`) and ``bench/`` share:

- :func:`cpm_start_step`: the first optimizer step with L_CPM;
- :func:`prompting_cams`: the CAM CPM takes its peaks from (the reference's no-grad, eval-mode
  multi-scale sum, or this step's CAM);
- :func:`cpm_peaks`: its peaks (or oracle points from GT instances) as SAM point prompts;
- :func:`cpm_targets`: SAM's class masks → the confidence-aggregated pseudo-label Ŝ;
- :func:`compute_losses`: every loss term of one step on one batch.

Each takes the ``cam`` config section resolved by :func:`s2c.sections.resolve_cam` (or its ``cpm``
subsection); what each key means is documented in :mod:`s2c.stages.train_cam`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data.transforms import denormalize, denormalize_255
from .errors import S2CError
from .losses import (cls_loss, cpm_loss, cpm_pseudo_label, find_peaks, find_peaks_reference,
                     multiscale_prompt_cams, normalize_cams, oracle_prompts, ssc_loss)
from .models import unwrap
from .sam import prompt as sam_prompt

__all__ = ["cpm_start_step", "prompt_batch", "prompting_cams", "cpm_peaks", "cpm_targets", "compute_losses"]


def cpm_start_step(cpm: dict, steps_per_epoch: int, total_steps: int) -> int:
    """The first optimizer step (0-based) that trains with L_CPM: ``start_step`` if set, else
    ``ceil(start_fraction × total_steps)``, else ``start_epoch × steps_per_epoch``."""
    if cpm["start_step"] is not None:
        return int(cpm["start_step"])
    if cpm["start_fraction"] is not None:
        return int(math.ceil(float(cpm["start_fraction"]) * total_steps - 1e-9))
    return int(cpm["start_epoch"]) * steps_per_epoch


def prompt_batch(cpm: dict, device: torch.device) -> int | None:
    """Images per prompting-CAM forward: ``cpm.prompt_batch``, else 1 on CPU (there the upscaled batch
    falls out of cache and one call over it is slower than image by image), else all."""
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
    valid = batch["valid"]
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
        prompt_cam = prompting_cams(unwrap(model), x, labels, cpm, step_cam=cam)
        target = cpm_targets(sam, batch, prompt_cam, cpm, cfg["sam_mode"])
        parts["loss_cpm"] = cpm["weight"] * cpm_loss(cam, target, labels, cpm["loss"])
    parts["loss"] = parts["loss_cls"] + parts["loss_ssc"] + parts["loss_cpm"]
    return parts
