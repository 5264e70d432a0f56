"""Fit the CAM classifier's new layers on frozen backbone features: a linear-probe start.

    s2c probe_cam --data-cfg '{...}' --split train --cfg '{...cam section...}' \\
        --probe '{"long_side": 320, "steps": 3000}' --out results/run/probe/model.pt

Why: fine-tuning all layers from the ImageNet weights at the reference's settings (new layers at 1×
LR, no momentum) learns the head of a class seen in a few dozen images far too slowly; on a small
set a short fine-tune from a fitted head ends well above a long one from a random head (measured:
docs/RESULTS.md, coco-plus). Starting a fine-tune from a fitted head is LP-FT (Kumar et al., ICLR 2022):
the backbone is then not pulled around by a random head's gradients in the first steps.

What it does: the backbone (eval mode, no grad) maps each training image and its horizontal flip,
resized to ``long_side``, to a feature map once; ``proj`` + ``classifier`` (METHOD.md §2) are then
trained with L_CLS (multilabel soft margin on the GAP of the CAMs) by SGD with momentum and poly
decay on batches of those maps. The output is a train_cam-style ``model.pt`` (the whole classifier:
backbone weights unchanged), so ``cam.init``, ``infer_cam`` and ``eval_cam`` take it like any run.

The features are kept in memory as float16: (2, C, ~L/os, ~L'/os) per image, 0.25 MB per image for
EfficientNet-Lite0 at OS16 and 320 px (~2.6 GB for VOC's train_aug).

Config — ``--probe`` (defaults :data:`PROBE_DEFAULTS`):

==========  ==========================================================================
key         meaning
==========  ==========================================================================
long_side   long side (px) the images are resized to for the features
steps       optimizer steps on the head
batch_size  feature maps per step (each an image or its flip)
lr          initial LR (poly decay, power 0.9)
momentum    SGD momentum
seed        sampling of the batches (the workflow passes the row's seed)
==========  ==========================================================================
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import train_utils as tu
from ..cli import parse_json_arg
from ..config import merge_section
from ..data import open_dataset
from ..data.transforms import normalize
from ..errors import S2CError, cli_main
from ..io import atomic_path
from ..losses import cls_loss
from ..models import build_classifier, cam_checkpoint
from ..sections import model_keys, resolve_cam

__all__ = ["PROBE_DEFAULTS", "frozen_features", "fit_head", "probe_cam", "main"]

log = logging.getLogger(__name__)

PROBE_DEFAULTS = {"long_side": 320, "steps": 3000, "batch_size": 16, "lr": 0.1, "momentum": 0.9, "seed": 0}


@torch.no_grad()
def frozen_features(model, ds, long_side: int, device: torch.device, progress: bool = True) -> list[torch.Tensor]:
    """Per image of ``ds``: the backbone's map of the image and its flip, (2, C, h, w) float16 on CPU."""
    model.eval()
    feats = []
    for i in tqdm(ds.ids, desc="probe_cam features", disable=not progress):
        im = ds.load_image(i)
        h, w = im.shape[:2]
        s = long_side / max(h, w)
        x = normalize(im)[None].to(device)
        x = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False)
        feats.append(model.backbone(torch.cat([x, x.flip(-1)])).to("cpu", torch.float16))
    return feats


def fit_head(model, feats: list[torch.Tensor], labels: torch.Tensor, cfg: dict, device: torch.device,
             progress: bool = True) -> list[float]:
    """Train ``model.proj`` + ``model.classifier`` on ``feats`` (see :func:`frozen_features`) with
    L_CLS against ``labels`` (N, C) {0,1}; returns the loss of every step."""
    head = [*model.proj.parameters(), *model.classifier.parameters()]
    opt = torch.optim.SGD(head, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=5e-4)
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    steps, bs = int(cfg["steps"]), int(cfg["batch_size"])
    losses = []
    for step in tqdm(range(steps), desc="probe_cam head", disable=not progress):
        for g in opt.param_groups:
            g["lr"] = cfg["lr"] * (1 - step / steps) ** 0.9
        idx = torch.randint(0, len(feats), (bs,), generator=gen).tolist()
        flip = torch.randint(0, 2, (bs,), generator=gen).tolist()
        loss = 0.0
        for j, f in zip(idx, flip):  # one map at a time: the images' feature maps differ in size
            cams = model.classifier(F.relu(model.proj(feats[j][f:f + 1].to(device, torch.float32))))
            loss = loss + cls_loss(cams.mean((2, 3)), labels[j:j + 1].to(device))
        loss = loss / bs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def probe_cam(data_cfg: dict, split: str, out: str | Path, weights_dir: str | Path = "weights",
              cam_cfg: dict | None = None, probe_cfg: dict | None = None, device: str = "auto",
              progress: bool = True) -> Path:
    """Write ``out`` (a model.pt) with the head of the ``cam_cfg`` classifier fitted on frozen features."""
    cfg = merge_section(PROBE_DEFAULTS, probe_cfg, "probe")
    for k in ("long_side", "steps", "batch_size"):
        if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < 1:
            raise S2CError(f"probe.{k} must be a positive integer, got {cfg[k]!r}")
    cam = resolve_cam(cam_cfg)
    if cam.get("init"):
        raise S2CError("probe_cam fits a fresh head: cam.init must be null (the probe is what a run starts from)")
    dev = tu.select_device(device)
    tu.seed_everything(int(cfg["seed"]))
    ds = open_dataset(data_cfg, split)
    model = build_classifier(model_keys(cam), ds.num_classes, weights_dir).to(dev)
    labels = torch.stack([torch.as_tensor(ds.labels(i)).float() for i in ds.ids])
    feats = frozen_features(model, ds, cfg["long_side"], dev, progress)
    losses = fit_head(model, feats, labels, cfg, dev, progress)
    tail = losses[-min(100, len(losses)):]
    log.info("probe_cam: %d head steps, mean L_CLS of the last %d: %.4f", len(losses), len(tail), sum(tail) / len(tail))
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save({**cam_checkpoint(model.cpu(), cam, ds.num_classes, ds.class_set), "probe": cfg}, tmp)
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c probe_cam", description=__doc__.split("\n")[0])
    p.add_argument("--data-cfg", required=True, help="the config's data section as JSON (or @file.json)")
    p.add_argument("--split", required=True, help="training split, e.g. train_aug")
    p.add_argument("--cfg", default="{}", help="the config's cam section as JSON (model keys)")
    p.add_argument("--probe", default="{}", help="probe keys as JSON (see module doc)")
    p.add_argument("--out", type=Path, required=True, help="the model.pt to write")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"), help="backbone weights folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = probe_cam(parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.out, a.weights_dir,
                    parse_json_arg(a.cfg, "--cfg"), parse_json_arg(a.probe, "--probe"), a.device,
                    progress=not a.no_progress)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
