"""Where CPM's target Ŝ stands against the CAM it is built from, over a whole training split.

For every training image with a GT mask: the image at a training-like size (long side
``--long-side``, whole image, no crop), the run's stored multi-scale CAMs (infer_cam's store) as the
prompting CAM, prompts from its peaks (the reference's rules: global max + local maxima > 0.5,
min distance 20) or from GT instances (``oracle``: one interior point per connected component of
each labelled class, s2c.losses.oracle), SAM's decoder on the cached embedding of the original
image, then Ŝ with the reference aggregation for each of SAM's three masks, with and without
``cpm.min_pred_iou``. Prints one table: peak hit rate (share of points on their own class) against
chance (the class's area share), and the mIoU of the prompting CAM (at ``--threshold``, eval_cam's
background threshold of the run) and of every Ŝ variant. CPM can only improve the CAM where Ŝ
beats the prompting CAM.

    .venv/bin/python bench/cpm_targets.py --data-cfg '{"kind": "coco", "root": "../shared/data/coco-plus", "class_set": "voc20"}' \\
        --split train --cams results/<run>/ablations/warmup/seed0/cam/cams_train.h5 \\
        --cam-metrics results/<run>/ablations/warmup/seed0/metrics/cam_train.json \\
        --embed-manifest cache/coco_plus/vit_t/train/embed.json --out bench/results/cpm_targets_coco_plus.txt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s2c.cam_store import CAMStore  # noqa: E402
from s2c.cpm_diagnostics import peak_hits  # noqa: E402
from s2c.data import open_dataset  # noqa: E402
from s2c.data.transforms import Geometry  # noqa: E402
from s2c.losses import cpm_pseudo_label, find_peaks  # noqa: E402
from s2c.losses.oracle import gt_instance_points  # noqa: E402
from s2c.metrics import ThresholdSearch, confusion_matrix, miou_from_confusion  # noqa: E402
from s2c.sam import prompt as sam_prompt  # noqa: E402
from s2c.sam.build import load_sam  # noqa: E402
from s2c.sam.cache import EmbeddingReader  # noqa: E402
from s2c.sections import resolve_cam  # noqa: E402

MASKS = (0, 1, 2)


def exclusive_cams(cams: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """(C, H, W) CAMs with each present class's map minus the largest other present class's map,
    clipped at 0: a class's peaks then fall where it wins over every other labelled class, not where
    two classes' maps overlap (on one-class images the maps are unchanged)."""
    out = cams.clone()
    if len(classes) > 1:
        for c in classes:
            others = [o for o in classes if o != c]
            out[c] = (cams[c] - cams[others].amax(0)).clamp(min=0)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-cfg", required=True, help="the config's data section as JSON")
    p.add_argument("--split", default="train")
    p.add_argument("--cams", type=Path, required=True, help="infer_cam store (.h5) of the run")
    p.add_argument("--cam-metrics", type=Path, default=None, help="eval_cam json: its background threshold")
    p.add_argument("--threshold", type=float, default=None, help="background threshold (else --cam-metrics)")
    p.add_argument("--embed-manifest", type=Path, required=True)
    p.add_argument("--sam", default="vit_t")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--long-side", type=int, default=320)
    p.add_argument("--min-pred-iou", type=float, default=0.88)
    p.add_argument("--limit", type=int, default=None, help="first N images with a mask (a quick look)")
    p.add_argument("--exclusive", action="store_true",
                   help="also prompt from the peaks of the class-exclusive CAM (a candidate rule, not the reference's)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    thr = a.threshold if a.threshold is not None else json.loads(a.cam_metrics.read_text())["threshold"]
    ref = resolve_cam({})["cpm"]  # the reference's peak and aggregation settings
    ds = open_dataset(json.loads(a.data_cfg), a.split)
    store, emb = CAMStore(a.cams), EmbeddingReader(a.embed_manifest)
    sam, _ = load_sam(a.sam, None, a.weights_dir, "cpu")
    C = ds.num_classes
    K = C + 1
    sources = ("peaks", "oracle") + (("exclusive",) if a.exclusive else ())
    variants = [(src, m, f) for src in sources for m in MASKS for f in (None, a.min_pred_iou)]
    cms = {v: np.zeros((K, K), np.int64) for v in variants}
    search = ThresholdSearch(K, [thr])
    stats = {src: [0, 0, 0.0] for src in sources}  # hits, points, chance
    ids = [i for i in ds.ids if ds.load_mask(i) is not None][: a.limit]
    for id_ in tqdm(ids, desc="cpm targets"):
        cams, classes = store.get(id_)
        gt0 = ds.load_mask(id_)
        H, W = gt0.shape
        s = a.long_side / max(H, W)
        size = (max(1, round(H * s)), max(1, round(W * s)))
        geo = Geometry(orig_size=(H, W), resized_size=size, flip=False, crop_offset=(0, 0), crop_size=size)
        gt = geo.warp_to_crop(gt0, "nearest", fill=255)
        pc = torch.zeros(C, *size)
        pc[torch.as_tensor(classes)] = F.interpolate(torch.from_numpy(cams)[None].float(), size=size,
                                                     mode="bilinear", align_corners=False)[0]
        labels = torch.zeros(C)
        labels[torch.as_tensor(classes)] = 1
        valid = torch.from_numpy(geo.valid_mask())
        search.add(pc[classes].numpy(), classes, gt)
        def peaks_of(maps: torch.Tensor) -> list:  # the reference's peak rule on (C, H, W) maps
            return find_peaks(maps[None], labels[None], ref["min_distance"], ref["threshold"], False,
                              valid[None], ref["exclude_border"])[0]

        prompts = {"peaks": peaks_of(pc),
                   "oracle": [(c, torch.from_numpy(q)) for c, q in gt_instance_points(gt, classes.tolist())]}
        if a.exclusive:
            prompts["exclusive"] = peaks_of(exclusive_cams(pc, classes.tolist()))
        meta = emb.meta(id_)
        for src, pts in prompts.items():
            h, n, ch = peak_hits(pts, gt)
            st = stats[src]
            st[0], st[1], st[2] = st[0] + h, st[1] + n, st[2] + ch
            cls = torch.tensor([c for c, _ in pts], dtype=torch.long)
            if cls.numel():
                logits, iou = sam_prompt.decode_prompts(
                    sam, emb.embedding(id_), [geo.points_to_orig(q.numpy()) - 0.5 for _, q in pts],
                    tuple(meta["orig_size"]), tuple(meta["input_size"]), "all")  # (k, 3, H, W), (k, 3)
                crop = geo.warp_to_crop_torch(logits.flatten(0, 1), "bilinear", fill=-20.0).view(len(cls), 3, *size)
            for m in MASKS:
                for f in (None, a.min_pred_iou):
                    if cls.numel():
                        keep = iou[:, m] >= f if f is not None else torch.ones(len(cls), dtype=torch.bool)
                        target = cpm_pseudo_label(pc, cls[keep], crop[keep, m], valid, ref["alpha_sam"],
                                                  ref["confidence"], ref["background"], ref["tau"])
                    else:
                        target = cpm_pseudo_label(pc, cls, torch.zeros(0, *size), valid)
                    cms[(src, m, f)] += confusion_matrix(target.numpy(), gt, K)
    _, cm_cam, _ = search.best()
    lines = [f"# {len(ids)} images of {a.split} with a GT mask, long side {a.long_side}; prompting CAM: {a.cams}",
             f"# commit {_commit()}; command: python bench/cpm_targets.py {' '.join(argv or sys.argv[1:])}",
             f"prompting CAM mIoU (bg threshold {thr}): {100 * miou_from_confusion(cm_cam):.2f}",
             "",
             f"{'prompts':<9} {'points':>7} {'hit %':>6} {'chance %':>8}   " + "  ".join(
                 f"{'Ŝ mask ' + str(m) + (' iou≥' + str(f) if f else ''):>18}" for m in MASKS for f in (None, a.min_pred_iou))]
    for src, (h, n, ch) in stats.items():
        row = "  ".join(f"{100 * miou_from_confusion(cms[(src, m, f)]):>18.2f}" for m in MASKS for f in (None, a.min_pred_iou))
        lines.append(f"{src:<9} {n:>7} {100 * h / max(n, 1):6.1f} {100 * ch / max(n, 1):8.1f}   {row}")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
