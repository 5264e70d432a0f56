"""The segmentation network (DeepLab V3/V3+) on pseudo-labels (METHOD.md §1 step 3).

Reads the images of a split and ``<labels>/<id>.png`` pseudo-labels (255 = ignore), trains with SGD
+ poly LR (``head_lr_mult``× on the head) and cross-entropy. Outputs in ``--out`` (the convention of
:class:`s2c.train_utils.TrainingRun`, shared with train_cam): ``last.pt`` every epoch (a killed run
resumes there), ``losses.csv`` (a row every ``log_every`` optimizer steps: the mean loss since the
previous row; ``step`` = steps completed) + ``losses.png`` and, written last and atomically,
``model.pt`` = ``{"model": state_dict, "seg_cfg": cfg, "num_classes": K, "class_set": str,
"class_names": [C names], "input_norm": {"mean", "std"}}``
(K = C + 1, background included).

Config: the ``seg`` section, defaults in :data:`s2c.sections.SEG_TRAIN_DEFAULTS` (model keys in
:mod:`s2c.models.deeplab`).

Usage::

    s2c train_seg --data-cfg '{"root": "data/voc"}' --split train_aug \
        --labels out/pseudo/train_aug --out out/seg --cfg '{"epochs": 2}' --device auto
    torchrun --nproc_per_node 4 -m s2c.stages.train_seg ...   # DDP, one process per GPU
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from .. import train_utils as tu
from ..cli import parse_json_arg
from ..data import open_dataset
from ..data.seg_train import PseudoLabelDataset, SegAugment
from ..errors import cli_main
from ..io import ensure_writable_dir
from ..models import build_deeplab, unwrap
from ..sections import SEG_TRAIN_DEFAULTS as DEFAULTS
from ..sections import resolve_seg as resolve_cfg

__all__ = ["DEFAULTS", "RESUME_FREE", "resolve_cfg", "seg_loss", "train_seg", "main"]

#: Keys that may change between a killed run and its resume without invalidating the checkpoint.
RESUME_FREE = {"num_workers", "log_every"}


def make_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.SGD:
    """SGD over the backbone (×1 LR) and head (×``head_lr_mult``) groups; each group keeps its
    ``lr_mult`` so the poly schedule can scale it."""
    return torch.optim.SGD(model.param_groups(cfg["head_lr_mult"]), lr=cfg["lr"], momentum=cfg["momentum"],
                           weight_decay=cfg["weight_decay"])


def seg_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled pixels. logits (B,K,H,W), label int64 (B,H,W), 255 ignored.
    A batch with no labelled pixel gives 0 (PyTorch's mean reduction would give NaN)."""
    n = (label != 255).sum().clamp(min=1)
    return F.cross_entropy(logits.float(), label, ignore_index=255, reduction="sum") / n


def resume_identity(cfg: dict, labels_dir: str | Path) -> dict:
    """What a checkpoint must match to be resumed: the config (less RESUME_FREE keys) and the
    pseudo-label files (regenerated labels → a fresh run)."""
    return {"cfg": {k: v for k, v in cfg.items() if k not in RESUME_FREE},
            "labels": tu.inputs_fingerprint(labels_dir)}


def train_seg(data_cfg: dict, split: str, labels_dir: str | Path, out_dir: str | Path,
              cfg: dict | None = None, weights_dir: str | Path | None = None, device: str = "auto",
              on_epoch_end: Callable[[int, dict], bool | None] | None = None) -> Path | None:
    """Train DeepLab on pseudo-labels; returns ``<out_dir>/model.pt`` (None when stopped early).

    Resumes from ``<out_dir>/last.pt`` when it holds an unfinished run of the same config and
    labels. ``on_epoch_end(epoch, {"loss": mean epoch loss, "step": steps done})`` runs after each
    epoch's checkpoint on every rank; a true return value ends training there (checkpoint kept,
    no model.pt): an early stop, or a stand-in for a killed job in tests.
    """
    cfg = resolve_cfg(cfg)
    out_dir = ensure_writable_dir(out_dir)
    dev = tu.select_device(device)
    rank, world, _ = tu.ddp_init("nccl" if dev.type == "cuda" else "gloo")
    try:
        return _train(data_cfg, split, labels_dir, out_dir, cfg, weights_dir, dev, on_epoch_end, rank, world)
    finally:
        tu.ddp_cleanup()


def _make_loader(data: PseudoLabelDataset, cfg: dict, dev: torch.device, rank: int, world: int
                 ) -> tuple[DataLoader, torch.Generator]:
    """Shuffling loader whose order and worker seeds come from the returned generator, which the
    loop reseeds per epoch: a resumed epoch sees the same batches as the killed one."""
    gen = torch.Generator()
    sampler = (DistributedSampler(data, world, rank, shuffle=True, seed=cfg["seed"]) if world > 1
               else RandomSampler(data, generator=gen))
    loader = DataLoader(data, batch_size=cfg["batch_size"], sampler=sampler, generator=gen,
                        num_workers=cfg["num_workers"], pin_memory=dev.type == "cuda",
                        drop_last=len(data) >= cfg["batch_size"] * world)  # ASPP's BN needs >1 image
    return loader, gen


def _train_step(model, opt, scaler, img, lab, use_amp: bool) -> float:
    """One SGD step on a batch (img (B,3,h,w), lab (B,h,w)); returns the loss averaged over ranks."""
    with torch.autocast(img.device.type, enabled=use_amp):
        loss = seg_loss(model(img), lab)
    value = tu.finite_loss(loss, "train_seg", "lower seg.lr or disable seg.amp")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return value


def _train(data_cfg, split, labels_dir, out_dir: Path, cfg, weights_dir, dev: torch.device, on_epoch_end,
           rank: int, world: int) -> Path | None:
    tu.seed_everything(cfg["seed"] + rank)
    ds = open_dataset(data_cfg, split)
    K = ds.num_classes + 1
    data = PseudoLabelDataset(ds, labels_dir, SegAugment(cfg["crop_size"], cfg["scale_range"],
                                                         cfg["flip"], cfg["jitter"]))
    loader, gen = _make_loader(data, cfg, dev, rank, world)
    model = build_deeplab(cfg, K, weights_dir).to(dev)
    opt = make_optimizer(model, cfg)
    use_amp = bool(cfg["amp"]) and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    run = tu.TrainingRun(out_dir, resume_identity(cfg, labels_dir), ["step", "epoch", "loss", "lr"], world,
                         title="train_seg loss")
    start_epoch, step = run.resume(model, opt, scaler, rank)
    model = tu.wrap_ddp(model, dev, world)
    total = cfg["epochs"] * len(loader)
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            model.train()
            gen.manual_seed((cfg["seed"] * 1000 + rank) * 100003 + epoch)
            if world > 1:
                loader.sampler.set_epoch(epoch)
            losses, logged = [], 0
            for img, lab in tqdm(loader, desc=f"train_seg {epoch + 1}/{cfg['epochs']}", disable=not tu.is_main(),
                                 leave=False):
                for g in opt.param_groups:
                    g["lr"] = tu.poly_lr(cfg["lr"] * g["lr_mult"], step, total, cfg["poly_power"])
                losses.append(_train_step(model, opt, scaler, img.to(dev, non_blocking=True),
                                          lab.to(dev, non_blocking=True), use_amp))
                step += 1
                if step % cfg["log_every"] == 0 or len(losses) == len(loader):
                    run.log({"step": step, "epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                             "loss": sum(losses[logged:]) / (len(losses) - logged)})  # mean since last row
                    logged = len(losses)
            run.end_epoch(epoch + 1, step, model, opt, scaler, cfg=cfg)
            if on_epoch_end is not None and on_epoch_end(epoch + 1, {"loss": sum(losses) / max(len(losses), 1),
                                                                     "step": step}):
                return None
    finally:
        run.close()
    # what applying the model elsewhere needs (s2c.stages.predict): the class names of its labels 1..K-1
    # and the normalisation its backbone's weights expect (the pipeline feeds ImageNet-normalised
    # tensors and the backbone re-maps them itself)
    norm = getattr(unwrap(model).backbone, "input_norm", None)
    return run.finish({"model": unwrap(model).state_dict(), "seg_cfg": cfg, "num_classes": K,
                       "class_set": ds.class_set, "class_names": list(ds.class_names),
                       "input_norm": norm() if callable(norm) else None})


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c train_seg", description=__doc__.split("\n")[0])
    p.add_argument("--data-cfg", required=True, help="the config's data section (JSON or @file.json)")
    p.add_argument("--split", required=True, help="split whose images are trained on, e.g. train_aug")
    p.add_argument("--labels", type=Path, required=True, help="directory of <id>.png pseudo-labels")
    p.add_argument("--out", type=Path, required=True, help="output dir: last.pt, losses.csv/png, model.pt")
    p.add_argument("--cfg", default="{}", help="the seg config section (JSON); defaults in s2c.sections.SEG_TRAIN_DEFAULTS")
    p.add_argument("--weights-dir", type=Path, default=None, help="where backbone weights are cached")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a = p.parse_args(argv)
    path = train_seg(parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.labels, a.out,
                     parse_json_arg(a.cfg, "--cfg"), a.weights_dir, a.device)
    if os.environ.get("RANK", "0") == "0":
        print(f"train_seg: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
