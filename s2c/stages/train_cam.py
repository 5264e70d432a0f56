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

Config — the ``cam`` section, key by key (the defaults, the authors' settings, are stated once, in
:data:`s2c.sections.TRAIN_DEFAULTS`; allowed words in
:data:`s2c.sections.CAM_CHOICES`; model keys ``backbone``,
``pretrained``, ``output_stride``, ``freeze_bn``, ``freeze_stem``, ``feat_dim`` are documented
in :mod:`s2c.models.classifier`):

========================  ============================================================================
key                       meaning
========================  ============================================================================
epochs                    training epochs (the reference's code trains 40, the paper says 6)
batch_size                per process
lr                        base LR (backbone); new layers get ``lr_mult_new`` ×
lr_mult_new               LR multiplier of the from-scratch layers (reference 1×: its
                          ``from_scratch_layers`` is empty, METHOD.md §2)
weight_decay              SGD weight decay
momentum                  SGD momentum (the reference's PolyOptimizer passes none)
poly_power                poly LR decay power
seed                      seeds the augmentation stream, the shuffle and the initialisation
num_workers               DataLoader workers (caches open lazily in each)
amp                       bfloat16 autocast on CUDA (ignored on CPU)
channels_last             the classifier in channels-last memory: same arithmetic, other kernels
                          (faster or slower by backbone and stride: bench/train_step.py
                          --channels-last); results equal to rounding
micro_batch               images per forward/backward, gradients accumulated over the batch's
                          slices (each loss weighted by its slice's share of the images);
                          null = the whole batch. Small slices keep a CPU's activations in
                          cache (bench/train_step.py --micro-batch). Not the same numbers: drop-connect draws differ, and SSC / CPM
                          average pixels per slice. With ``freeze_bn: false`` BatchNorm
                          statistics come from the slice
augment                   :class:`s2c.data.transforms.TrainAugment` keys (reference defaults)
sam_mode                  ``cached``: decoder-only on the embedding cache; ``online``: encode
                          every augmented crop with SAM, as the reference does (no cache;
                          its resize: ``cpm.sam_resize``)
ablation                  a row of the paper's Tables 1/2, see :data:`ABLATIONS`; applied
                          over the keys below
init                      a train_cam ``model.pt`` to start from instead of the ImageNet
                          weights (same backbone, output stride, feat_dim and class set):
                          a shared warm-up checkpoint (``ablations.warmup``). Optimizer,
                          LR schedule and CPM start count from this run's step 0
ssc.enabled               L_SSC on
ssc.level                 ``feature`` (F, the paper) | ``logit`` (the CAMs; Table 1 row 2)
ssc.temperature           divisor of the cosines (reference ≡ 1: it multiplies by T = 1;
                          paper 0.5)
ssc.unassigned_prototype  the unassigned (and padding) pixels' mean as an extra negative
                          prototype, as the reference's scatter over segment 0 does
ssc.size                  side at which SSC is computed: null = the crop (paper/reference);
                          a smaller side is a cheaper departure (SE map subsampled, nearest)
ssc.weight                factor of L_SSC
ssc.absent_prototypes     a departure from the reference, explained: ``true`` = its
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
cpm.enabled               L_CPM on
cpm.start_epoch           first (0-based) epoch with L_CPM (reference ``sstart`` 2; paper:
                          off for the first epoch only); used when the two keys below are null
cpm.start_step            first optimizer step with L_CPM (overrides start_epoch); the paper
                          waits ≈ 1.3k steps (one VOC epoch), the reference ≈ 2.6k
cpm.start_fraction        first step with L_CPM as a fraction of the whole schedule (paper
                          ≈ 1/6): a small dataset then never switches CPM on after a few
                          dozen steps. At most one of start_step / start_fraction
cpm.prompt_cam            ``multiscale``: no-grad eval-mode CAMs at ``cpm.scales``, summed (the
                          reference's prompting CAM); ``step``: this step's CAMs, detached
                          (a departure: no extra forwards, fewer peaks on their object)
cpm.scales                the reference's; fewer scales are a cheaper departure
cpm.prompt_batch          images per no-grad forward of the multiscale prompting CAM; null =
                          1 on CPU (faster there than the whole batch: bench/train_step.py),
                          the whole batch on GPU. The same CAMs (eval mode, frozen BN: images are independent)
cpm.min_distance          peak spacing in crop pixels (reference, 256 crops)
cpm.threshold             τ for local peaks (the global max is always a prompt)
cpm.single_peak           only the global max (Table 2 "single peak")
cpm.prompts               where the points come from: ``peaks`` of the prompting CAM (the
                          method) | ``oracle``: one interior point per GT instance of each
                          labelled class (s2c.losses.oracle; needs GT masks: a diagnostic)
cpm.min_pred_iou          drop a class's SAM mask when SAM's predicted IoU is below this
                          (a departure, not in the paper: prompts that miss their object
                          tend to give masks SAM itself rates low)
cpm.exclude_border        drop local peaks within min_distance of the border (peak_local_max)
cpm.multimask_index       SAM output kept (reference 2, the largest), or "best"
cpm.alpha_sam             α_sam: ``logits`` (reference) | ``sigmoid`` | ``stability``
cpm.confidence            α = ``both`` α_sam·α_cam | ``sam`` | ``cam`` | ``none``
cpm.background            ``uncovered`` (reference) | ``tau`` (paper eq. 11, max_c α < cpm.tau)
cpm.tau                   τ of ``background: tau``
cpm.loss                  ``ce`` over [1 − max A; A] | ``l1`` to class masks (Table 2 "no bg map")
cpm.batching              decoder batching of one image's classes (s2c.sam.prompt)
cpm.weight                factor of L_CPM
cpm.sam_resize            SAM's input in ``sam_mode: online`` (no effect in cached mode,
                          whose embedding is of the original image): ``sam`` = the crop
                          rounded to uint8, SAM's ResizeLongestSide (PIL, antialiased);
                          ``reference`` = the authors' float crop × 255 squashed to 1024²
                          (bilinear, align_corners=True) and truncated to uint8, prompts and
                          masks in that squashed frame. ``sam`` departs on purpose: it is
                          SamPredictor's preprocessing, the one the cached embeddings have
cpm.peak_rule             ``s2c``: :func:`s2c.losses.find_peaks` (a peak is the CAM's own
                          maximum; the strongest local peak is kept); ``reference``:
                          :func:`s2c.losses.find_peaks_reference`, the authors' rule with its
                          quirks (the top-left pixel of the 3×3 max-filter plateau, τ tested
                          there, its first local peak dropped even when the global max is
                          not one of them: accidents of its code, which ``s2c`` avoids)
cpm.confidence_source     the SAM logits α_sam comes from: ``postprocessed`` (the mask's
                          own logits, so a covered pixel never scores < 0) | ``lowres``
                          (the reference: SAM's 256² logits resized straight to the crop, the
                          mask still from the post-processed ones; where the two disagree in
                          sign a covered pixel scores < 0 and is background). ``lowres``
                          needs ``sam_mode: online`` (an S2CError in cached mode)
diagnostics.enabled       per epoch, on a fixed sample of training images with GT masks: CPM's
                          peak hit rate vs chance, Ŝ mIoU, prompting-CAM mIoU → cpm_diag.csv/png
                          (s2c.cpm_diagnostics; only when L_CPM is on and the split has masks)
diagnostics.n_images      images in the sample
diagnostics.every         run them every N epochs (and after the last one)
========================  ============================================================================

``--sam-cfg``: ``{"model_type": vit_t|vit_b|vit_l|vit_h|vit_test, "checkpoint": path|null}``; the
decoder must come from the checkpoint that built the embedding cache (checked).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .. import train_utils as tu
from ..cam_training import CAMTraining, setup
from ..cli import parse_json_arg
from ..cpm_diagnostics import FIELDS as DIAG_FIELDS
from ..data.cam_train import to_device
from ..errors import cli_main
from ..io import ensure_writable_dir
from ..models import cam_checkpoint, unwrap
from ..objective import compute_losses
from ..plots import note_figure, plot_csv
from ..sections import resolve_cam as resolve_cfg

log = logging.getLogger(__name__)

LOSS_FIELDS = ["step", "epoch", "lr", "loss", "loss_cls", "loss_ssc", "loss_cpm", "step_time"]


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
        tu.seed_everything(cfg["seed"] + rank)
        t = setup(data_cfg, split, weights_dir, cfg, sam_cfg, embed_manifest, se_manifest, dev, rank, world, model)
        return _loop(t, cfg, out, split, dev, rank, world, on_epoch_end, progress)
    finally:
        tu.ddp_cleanup()


def _loop(t: CAMTraining, cfg: dict, out: Path, split: str, dev: torch.device, rank: int, world: int,
          on_epoch_end, progress: bool) -> Path | None:
    """The training loop: poly LR, micro-batches, L_CLS + L_SSC + L_CPM, a checkpoint per epoch."""
    run = tu.TrainingRun(out, t.identity, LOSS_FIELDS, world, ["loss", "loss_cls", "loss_ssc", "loss_cpm"],
                         title=f"train_cam ({split})")
    start_epoch, step = run.resume(t.model, t.opt, rank=rank)
    model, opt, epochs = tu.wrap_ddp(t.model, dev, world), t.opt, cfg["epochs"]
    amp = cfg["amp"] and dev.type == "cuda"
    diag_log = (tu.CSVLogger(out / "cpm_diag.csv", DIAG_FIELDS, resume_step=step + 1 if run.resumed else None)
                if t.diagnostics is not None else None)
    model.train()
    try:
        for epoch in range(start_epoch, epochs):
            t.sampler.set_epoch(epoch)
            t.data.set_epoch(epoch)
            losses = []
            for batch in tqdm(t.loader, desc=f"train_cam epoch {epoch + 1}/{epochs}",
                              disable=not (progress and tu.is_main())):
                t0 = time.perf_counter()
                for g in opt.param_groups:
                    g["lr"] = tu.poly_lr(cfg["lr"], step, t.total, cfg["poly_power"]) * g["lr_mult"]
                opt.zero_grad(set_to_none=True)
                parts: dict[str, torch.Tensor] = {}
                slices = tu.micro_batches(to_device(batch, dev), cfg["micro_batch"])
                for i, (mb, share) in enumerate(slices):
                    # DDP: gradients are all-reduced once, after the last slice
                    sync = model.no_sync() if world > 1 and i < len(slices) - 1 else contextlib.nullcontext()
                    with sync:
                        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                            mb_parts = compute_losses(model, mb, cfg, t.sam,
                                                      use_cpm=t.sam is not None and step >= t.cpm_from)
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
                _log_diagnostics(t.diagnostics, diag_log, out, split, epoch + 1, step)
            run.end_epoch(epoch + 1, step, model, opt, cfg=cfg)
            if on_epoch_end is not None and on_epoch_end(epoch + 1, {"loss": sum(losses) / max(len(losses), 1),
                                                                     "step": step}):
                return None
    finally:
        run.close()
        if diag_log is not None:
            diag_log.close()
    if t.diagnostics_off is not None:  # the report's diagnostics entry then says why there are none
        note_figure(out / "cpm_diag.png", "CPM diagnostics", f"No CPM diagnostics in this run: {t.diagnostics_off}.")
    return run.finish(cam_checkpoint(unwrap(model), cfg, t.ds.num_classes, t.ds.class_set))


def _log_diagnostics(diag, diag_log, out: Path, split: str, epoch: int, step: int) -> None:
    row = {"epoch": epoch, "step": step, **diag()}
    diag_log.log(row)
    log.info("CPM diagnostics after epoch %d: %s", epoch, row)
    plot_csv(out / "cpm_diag.csv", out / "cpm_diag.png", ["peak_hit_rate", "peak_chance", "pseudo_miou", "prompt_cam_miou"],
             title=f"CPM diagnostics ({split}, {row['n_images']} images)")


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
