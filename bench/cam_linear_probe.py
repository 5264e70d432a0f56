"""How well do a backbone's frozen ImageNet features localise a dataset's classes? (issue 10)

Trains only the CAM classifier's from-scratch layers (proj + classifier, METHOD.md §2) on frozen
backbone features computed once per training image (and its flip) at one size, then writes a
train_cam-style ``model.pt`` that ``python -m s2c.infer_cam`` / ``s2c.eval_cam`` score like any
run. Minutes on 2 CPU cores instead of hours: a reference point for a CPU schedule (a fine-tuned
baseline below it has not learned what the ImageNet features already know).

    .venv/bin/python bench/cam_linear_probe.py --root ../shared/data/coco-plus --long 480 \\
        --out /tmp/probe480 --scales 0.75 1.0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from s2c.data import open_dataset  # noqa: E402
from s2c.data.transforms import normalize  # noqa: E402
from s2c.models import build_classifier  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="../shared/data/coco-plus")
    p.add_argument("--kind", default="coco")
    p.add_argument("--class-set", default="voc20")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--output-stride", type=int, default=16)
    p.add_argument("--long", type=int, default=320, help="long side of the training images (px)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75], help="infer_cam scales")
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.manual_seed(0)
    data = {"kind": a.kind, "root": a.root, "class_set": a.class_set, "drop_unlabeled": True}
    cfg = {"backbone": a.backbone, "pretrained": True, "output_stride": a.output_stride}
    ds = open_dataset(data, "train")
    model = build_classifier(cfg, ds.num_classes, a.weights_dir).eval()
    feats, labels = [], []
    t0 = time.perf_counter()
    with torch.no_grad():  # the frozen backbone, once per image and its flip
        for i in tqdm(ds.ids, desc="features"):
            im = ds.load_image(i)
            h, w = im.shape[:2]
            s = a.long / max(h, w)
            x = F.interpolate(normalize(im)[None], size=(round(h * s), round(w * s)), mode="bilinear",
                              align_corners=False)
            feats.append(model.backbone(torch.cat([x, x.flip(-1)])))
            labels.append(torch.as_tensor(ds.labels(i)).float())
    t_feat = time.perf_counter() - t0
    head = [*model.proj.parameters(), *model.classifier.parameters()]
    opt = torch.optim.SGD(head, lr=a.lr, momentum=0.9, weight_decay=5e-4)
    t0 = time.perf_counter()
    for step in tqdm(range(a.steps), desc="head"):
        loss = 0.0
        for j in torch.randint(0, len(feats), (a.batch,)).tolist():
            f = feats[j][torch.randint(0, 2, (1,))]
            logits = model.classifier(F.relu(model.proj(f))).mean((2, 3))
            loss = loss + F.multilabel_soft_margin_loss(logits, labels[j][None])
        opt.zero_grad()
        (loss / a.batch).backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = a.lr * (1 - step / a.steps) ** 0.9
    t_head = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "cam_cfg": cfg, "num_classes": ds.num_classes,
                "class_set": a.class_set}, a.out / "model.pt")
    py, dcfg = sys.executable, json.dumps({**data, "gt_dir": None, "cache_dir": None})
    subprocess.run([py, "-m", "s2c.infer_cam", "--model", str(a.out / "model.pt"), "--data-cfg", dcfg,
                    "--split", "train", "--out", str(a.out / "train.h5"), "--weights-dir", a.weights_dir,
                    "--cfg", json.dumps({"scales": a.scales, "flip": True})], check=True)
    subprocess.run([py, "-m", "s2c.eval_cam", "--cams", str(a.out / "train.h5"), "--data-cfg", dcfg,
                    "--split", "train", "--out", str(a.out / "cam_train.json")], check=True)
    m = json.loads((a.out / "cam_train.json").read_text())
    print(f"\n| backbone | long side | head steps | infer scales | CAM mIoU | centre-prior floor | features s | head s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {a.backbone} OS{a.output_stride} | {a.long} | {a.steps} | {a.scales} | {m['miou']:.2f} | "
          f"{m['floors']['centre_prior']['miou']:.2f} | {t_feat:.0f} | {t_head:.0f} |")


if __name__ == "__main__":
    main()
