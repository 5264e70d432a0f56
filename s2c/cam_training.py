"""Setting up a CAM classifier's training: SAM, the dataset over the caches, the model (with its
warm start), the optimizer and the loader, the CPM start and the diagnostics. The loop itself is
:func:`s2c.stages.train_cam.train_cam`; the objective it minimises is :mod:`s2c.objective`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler

from . import train_utils as tu
from .cpm_diagnostics import make_diagnostics, pick_sample
from .data import open_dataset
from .data.cam_train import CAMTrainDataset, collate
from .defaults import DEFAULT_MODEL_TYPE
from .errors import S2CError
from .io import sha256_file
from .models import build_classifier, read_cam_checkpoint
from .objective import cpm_start_step
from .sam.build import load_sam
from .sam.cache import EmbeddingReader, SEMapReader
from .sections import cam_caches, model_keys

log = logging.getLogger(__name__)


@dataclass
class CAMTraining:
    """Everything the training loop needs, built by :func:`setup`."""

    model: torch.nn.Module  # on the device (DDP-wrapped later, after resuming)
    opt: torch.optim.Optimizer
    loader: DataLoader
    sampler: DistributedSampler
    data: CAMTrainDataset
    ds: Any  # the image dataset (class set, ids, masks)
    sam: Any  # frozen SAM for L_CPM, or None
    cpm_from: int  # first optimizer step with L_CPM
    total: int  # optimizer steps of the whole schedule
    identity: dict  # what a resumable checkpoint must match (config and inputs)
    diagnostics: Callable[[], dict] | None  # one CPM diagnostics row, or None ...
    diagnostics_off: str | None  # ... and why


def setup(data_cfg: dict, split: str, weights_dir, cfg: dict, sam_cfg: dict | None, embed_manifest, se_manifest,
          device: torch.device, rank: int, world: int, model: torch.nn.Module | None = None) -> CAMTraining:
    """Build a run from the resolved ``cam`` section ``cfg`` (:func:`s2c.sections.resolve_cam`).
    ``model`` replaces the classifier :func:`s2c.models.build_classifier` would build."""
    use_sam = cfg["cpm"]["enabled"]
    sam, sha = load_sam_for_training(sam_cfg or {}, weights_dir, device) if use_sam else (None, None)
    embed_expect = {"model_type": sam.model_type, "checkpoint_sha256": sha} if use_sam else None
    data, ds = build_dataset(data_cfg, split, cfg, embed_manifest, se_manifest, embed_expect)
    if model is None:
        model = build_classifier(model_keys(cfg), ds.num_classes, weights_dir)
    if cfg["init"] is not None:
        init_from(model, cfg, ds.num_classes, ds.class_set)
    model = model.to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)  # inputs follow the weights' layout
    opt = torch.optim.SGD(model.param_groups(cfg["lr_mult_new"]), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    loader, sampler = make_loader(data, cfg, device, rank, world, split)
    total = len(loader) * cfg["epochs"]
    diag, off = make_diagnostics(model, sam, data, ds, cfg, device) if tu.is_main() else (None, None)
    # Resume only a run over the same config and inputs (a killed job); a job rerun because its
    # config, image list or caches changed starts from scratch.
    identity = {"cfg": {k: v for k, v in cfg.items() if k != "num_workers"},
                "inputs": {"images": ds.image_list_hash(),
                           "caches": tu.inputs_fingerprint(embed_manifest, se_manifest),
                           **({"init": sha256_file(cfg["init"])} if cfg["init"] is not None else {})}}
    return CAMTraining(model, opt, loader, sampler, data, ds, sam, cpm_from_logged(cfg["cpm"], len(loader), total),
                       total, identity, diag, off)


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


def make_loader(data, cfg: dict, dev: torch.device, rank: int, world: int, split: str):
    """(loader, sampler): each process takes its share of a seeded shuffle, full batches only."""
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=cfg["seed"], drop_last=True)
    if len(data) // world < cfg["batch_size"]:
        raise S2CError(f"split {split!r} has {len(data)} images: fewer than cam.batch_size={cfg['batch_size']} "
                       f"per process × {world}; lower cam.batch_size")
    loader = DataLoader(data, cfg["batch_size"], sampler=sampler, num_workers=cfg["num_workers"],
                        collate_fn=collate, drop_last=True, pin_memory=dev.type == "cuda",
                        persistent_workers=False)
    return loader, sampler


def cpm_from_logged(cpm: dict, steps_per_epoch: int, total: int) -> int:
    """The first step with L_CPM (:func:`cpm_start_step`), logged; a warning when it never comes."""
    cpm_from = cpm_start_step(cpm, steps_per_epoch, total)
    if cpm["enabled"]:
        log.info("L_CPM from step %d of %d (%d steps per epoch)", cpm_from, total, steps_per_epoch)
        if cpm_from >= total:
            log.warning("cam.cpm starts at step %d but the schedule has only %d steps: CPM never runs",
                        cpm_from, total)
    return cpm_from
