"""Stage: train the segmentation network (DeepLab V3/V3+) on pseudo-labels (METHOD.md §1 step 3).

Reads the images of a split and ``<labels>/<id>.png`` pseudo-labels (255 = ignore), trains with SGD
+ poly LR (``head_lr_mult``× on the head) and cross-entropy, checkpoints every epoch to
``<out>/ckpt/last.pt`` (a killed run resumes there), logs ``<out>/log.csv`` + ``<out>/losses.png`` and
finally writes ``<out>/model.pt`` = ``{"model": state_dict, "seg_cfg": cfg, "num_classes": K,
"class_set": str}`` atomically (K = C + 1, background included).

Usage::

    python -m s2c.train_seg --data-cfg '{"root": "data/voc"}' --split train_aug \
        --labels out/pseudo/train_aug --out out/seg --cfg '{"epochs": 2}' --device auto
    torchrun --nproc_per_node 4 -m s2c.train_seg ...   # DDP, one process per GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from . import train_utils as tu
from .config import merge_section
from .data import open_dataset
from .data.seg_train import PseudoLabelDataset, SegAugment
from .errors import S2CError, cli_main
from .io import atomic_path, ensure_writable_dir
from .models.deeplab import SEG_DEFAULTS, build_deeplab

#: The ``seg`` config section (eval_seg has its own section, s2c.eval_seg.DEFAULTS).
DEFAULTS: dict[str, Any] = {
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

#: Keys that may change between a killed run and its resume without invalidating the checkpoint.
RESUME_FREE = {"num_workers", "log_every"}


def resolve_cfg(cfg: dict | None) -> dict:
    """The full ``seg`` section: :data:`DEFAULTS` overlaid with ``cfg``, checked."""
    out = merge_section(DEFAULTS, cfg, "seg")
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


def build_model(cfg: dict, num_classes_with_bg: int, weights_dir: str | Path | None) -> torch.nn.Module:
    """DeepLab from the model keys of ``cfg``; ``weights_dir`` holds backbone weights."""
    return build_deeplab({k: cfg[k] for k in SEG_DEFAULTS}, num_classes_with_bg, weights_dir)


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
              on_epoch_end: Callable[[int, dict], None] | None = None) -> Path:
    """Train DeepLab on pseudo-labels; returns the path of ``<out_dir>/model.pt``.

    Resumes from ``<out_dir>/ckpt/last.pt`` when present (same config required). ``on_epoch_end(
    epoch, {"loss": mean epoch loss, "step": steps done})`` runs after each epoch's checkpoint, on
    every rank (e.g. to stop early, or to simulate a kill in tests).
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
    value = float(tu.all_reduce_mean(loss.detach()))
    if not math.isfinite(value):  # same value on every rank, so all of them stop together
        raise S2CError(f"train_seg: loss became {value}; lower seg.lr or disable seg.amp")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return value


def _train(data_cfg, split, labels_dir, out_dir: Path, cfg, weights_dir, dev: torch.device, on_epoch_end,
           rank: int, world: int) -> Path:
    tu.seed_everything(cfg["seed"] + rank)
    ds = open_dataset(data_cfg, split)
    K = ds.num_classes + 1
    data = PseudoLabelDataset(ds, labels_dir, SegAugment(cfg["crop_size"], cfg["scale_range"],
                                                         cfg["flip"], cfg["jitter"]))
    loader, gen = _make_loader(data, cfg, dev, rank, world)
    model = build_model(cfg, K, weights_dir).to(dev)
    opt = make_optimizer(model, cfg)
    use_amp = bool(cfg["amp"]) and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    ckpt = tu.Checkpointer(out_dir / "ckpt")
    identity = resume_identity(cfg, labels_dir)
    state = tu.load_resumable(ckpt, identity)
    start_epoch, step = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        tu.set_rng_state(state["rng"])
        start_epoch, step = state["epoch"], state["step"]
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    total = cfg["epochs"] * len(loader)
    main = tu.is_main()
    # rows are labelled with steps completed, so the checkpoint covers rows up to `step` inclusive
    logger = tu.CSVLogger(out_dir / "log.csv", ["step", "epoch", "loss", "lr"],
                          resume_step=step + 1 if state is not None else None) if main else None
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            model.train()
            gen.manual_seed((cfg["seed"] * 1000 + rank) * 100003 + epoch)
            if world > 1:
                loader.sampler.set_epoch(epoch)
            losses, logged = [], 0
            for img, lab in tqdm(loader, desc=f"train_seg {epoch + 1}/{cfg['epochs']}", disable=not main, leave=False):
                for g in opt.param_groups:
                    g["lr"] = tu.poly_lr(cfg["lr"] * g["lr_mult"], step, total, cfg["poly_power"])
                losses.append(_train_step(model, opt, scaler, img.to(dev, non_blocking=True),
                                          lab.to(dev, non_blocking=True), use_amp))
                step += 1
                if main and (step % cfg["log_every"] == 0 or len(losses) == len(loader)):
                    logger.log({"step": step, "epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                                "loss": sum(losses[logged:]) / (len(losses) - logged)})  # mean since last row
                    logged = len(losses)
            if main:
                ckpt.save({"epoch": epoch + 1, "step": step, "cfg": cfg, "identity": identity, "model": tu.unwrap(model).state_dict(),
                           "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng": tu.rng_state()})
                tu.plot_csv(out_dir / "log.csv", out_dir / "losses.png", ["loss"], title="train_seg loss")
            tu.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, {"loss": sum(losses) / max(len(losses), 1), "step": step})
    finally:
        if logger is not None:
            logger.close()
    model_path = out_dir / "model.pt"
    if main:
        with atomic_path(model_path) as tmp:
            torch.save({"model": tu.unwrap(model).state_dict(), "seg_cfg": cfg, "num_classes": K,
                        "class_set": ds.class_set}, tmp)
    tu.barrier()
    return model_path


def _json_arg(s: str) -> dict:
    try:
        v = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return v


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m s2c.train_seg", description=__doc__.split("\n")[0])
    p.add_argument("--data-cfg", type=_json_arg, required=True, help="the config's data section (JSON)")
    p.add_argument("--split", required=True, help="split whose images are trained on, e.g. train_aug")
    p.add_argument("--labels", type=Path, required=True, help="directory of <id>.png pseudo-labels")
    p.add_argument("--out", type=Path, required=True, help="output dir: ckpt/, log.csv, losses.png, model.pt")
    p.add_argument("--cfg", type=_json_arg, default={}, help="the seg config section (JSON); defaults in s2c.train_seg.DEFAULTS")
    p.add_argument("--weights-dir", type=Path, default=None, help="where backbone weights are cached")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a = p.parse_args(argv)
    path = train_seg(a.data_cfg, a.split, a.labels, a.out, a.cfg, a.weights_dir, a.device)
    if os.environ.get("RANK", "0") == "0":
        print(f"train_seg: wrote {path}")
    return 0


if __name__ == "__main__":
    main()
