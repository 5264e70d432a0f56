"""How fast does the seg net fit each row's pseudo-labels? A few epochs of the seg schedule per
(label set, seg seed), stopped early, and the mean training loss of each epoch as a table.

Two rows' seg nets can end far apart on labels that differ little. Restarting the same schedule with
another ``seg.seed`` separates what the labels do (the gap keeps its sign across seeds) from what a
single run does (the gap changes size with the seed). The poly LR follows the full schedule
(``cfg["epochs"]``): the stopped run's first epochs are those of a full run.

    .venv/bin/python bench/seg_label_fit.py --data-cfg '{"kind": "coco", "root": "../shared/data/coco-plus", "class_set": "voc20"}' \\
        --cfg '{"lr": 0.001, "head_lr_mult": 100, "epochs": 20, "crop_size": 256, "scale_range": [0.4, 0.6], "freeze_bn": true}' \\
        --labels baseline=results/coco_plus_cpu_s2c/ablations/baseline/seed0/pseudo/train \\
                 s2c=results/coco_plus_cpu_s2c/ablations/s2c/seed0/pseudo/train \\
        --seeds 1 --stop-epoch 2 --work /tmp/seg_label_fit --out bench/results/seg_label_fit_seed0.txt
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from s2c.stages.train_seg import train_seg


def epoch_means(losses_csv: Path) -> list[float]:
    by: dict[int, list[float]] = {}
    with open(losses_csv, newline="") as f:
        for r in csv.DictReader(f):
            by.setdefault(int(r["epoch"]), []).append(float(r["loss"]))
    return [float(np.mean(v)) for _, v in sorted(by.items())]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-cfg", required=True, help="the data section (JSON)")
    p.add_argument("--cfg", default="{}", help="the seg section (JSON; its seed is replaced by --seeds)")
    p.add_argument("--labels", nargs="+", required=True, metavar="NAME=DIR", help="pseudo-label folders")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--stop-epoch", type=int, default=2)
    p.add_argument("--work", type=Path, required=True, help="scratch folder for the stopped runs")
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    labels = dict(x.split("=", 1) for x in a.labels)
    data_cfg, cfg = json.loads(a.data_cfg), json.loads(a.cfg)
    lines = ["labels\tseg_seed\t" + "\t".join(f"epoch{e}" for e in range(1, a.stop_epoch + 1))]
    for seed in a.seeds:
        for name, d in labels.items():
            out = a.work / f"{name}_seed{seed}"
            train_seg(data_cfg, "train", d, out, {**cfg, "seed": seed}, weights_dir=a.weights_dir,
                      device="cpu", on_epoch_end=lambda ep, m: ep >= a.stop_epoch)
            lines.append(f"{name}\t{seed}\t" + "\t".join(f"{v:.3f}" for v in epoch_means(out / "losses.csv")))
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
