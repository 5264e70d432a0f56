"""How well do a backbone's frozen ImageNet features localise a dataset's classes?

Runs the probe_cam stage (:mod:`s2c.stages.probe_cam`: only the CAM classifier's new layers, trained on
frozen backbone features of each training image and its flip at one size) and scores its
``model.pt`` with ``s2c infer_cam`` / ``s2c.stages.eval_cam`` like any run.
Minutes on 2 CPU cores instead of hours: a reference point for a CPU schedule (a fine-tuned baseline
below it has not learned what the ImageNet features already know).

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from s2c.stages.probe_cam import probe_cam  # noqa: E402


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
    data = {"kind": a.kind, "root": a.root, "class_set": a.class_set, "drop_unlabeled": True}
    cfg = {"backbone": a.backbone, "pretrained": True, "output_stride": a.output_stride}
    t0 = time.perf_counter()
    probe_cam(data, "train", a.out / "model.pt", a.weights_dir, cfg,
              {"long_side": a.long, "steps": a.steps, "lr": a.lr, "batch_size": a.batch})
    t_probe = time.perf_counter() - t0
    py, dcfg = sys.executable, json.dumps({**data, "gt_dir": None, "cache_dir": None})
    subprocess.run([py, "-m", "s2c.stages.infer_cam", "--model", str(a.out / "model.pt"), "--data-cfg", dcfg,
                    "--split", "train", "--out", str(a.out / "train.h5"), "--weights-dir", a.weights_dir,
                    "--cfg", json.dumps({"scales": a.scales, "flip": True})], check=True)
    subprocess.run([py, "-m", "s2c.stages.eval_cam", "--cams", str(a.out / "train.h5"), "--data-cfg", dcfg,
                    "--split", "train", "--out", str(a.out / "cam_train.json")], check=True)
    m = json.loads((a.out / "cam_train.json").read_text())
    print("\n| backbone | long side | head steps | infer scales | CAM mIoU | centre-prior floor | probe s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {a.backbone} OS{a.output_stride} | {a.long} | {a.steps} | {a.scales} | {m['miou']:.2f} | "
          f"{m['floors']['centre_prior']['miou']:.2f} | {t_probe:.0f} |")


if __name__ == "__main__":
    main()
