"""Benchmark the SAM cache stages on real COCO images with MobileSAM.

    python bench/sam_cache.py --n-images 3 --points-per-side 32 --device auto \\
        [--coco-root ../shared/data/coco-mini] [--weights-dir weights] [--skip-covered]

Prints, for the same generator settings: stock ``SamAutomaticMaskGenerator`` images/s vs the fast
generator (``s2c.sam.everything``), the agreement of their SE maps (mean over images of the pixel
mIoU after Hungarian matching of segments, :func:`s2c.sam.everything.se_agreement`), embedding
images/s (batched encoder), and the bytes per image of each store (written with the real writer).
Last line: ``se_speedup=<x> agreement=<y>``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s2c.defaults import everything_settings, resolve_everything_cfg  # noqa: E402
from s2c.io import read_image  # noqa: E402
from s2c.sam.build import build_sam, resolve_device  # noqa: E402
from s2c.sam.cache import PartWriter, make_identity  # noqa: E402
from s2c.sam.everything import (  # noqa: E402
    compact_dtype,
    fast_masks,
    merge_masks,
    se_agreement,
    stock_masks,
)
from s2c.sam.prompt import encode_images, sam_input_size  # noqa: E402
from s2c.stages.sam_embed import embed_settings  # noqa: E402
from s2c.weights import cached_sha256, ensure_mobile_sam  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=int, default=3)
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--points-per-batch", type=int, default=64, help="stock generator's batch (its default)")
    p.add_argument("--fast-batch", type=int, default=None, help="fast generator's prompt batch (default: 256 on GPU, 4 on CPU)")
    p.add_argument("--stability-margin", type=float, default=None, help="fast generator's low-res pre-filter margin")
    p.add_argument("--skip-covered", action="store_true", help="also time the approximate skip_covered mode")
    p.add_argument("--embed-batch", type=int, default=4)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--coco-root", type=Path, default=REPO.parent / "shared" / "data" / "coco-mini")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    files = sorted((a.coco_root / "val").glob("*.jpg"))[: a.n_images]
    if not files:
        print(f"no images under {a.coco_root / 'val'}", file=sys.stderr)
        return 2
    ckpt = ensure_mobile_sam(a.weights_dir)
    sam = build_sam("vit_t", ckpt, dev)
    images = [read_image(f) for f in files]
    cfg = resolve_everything_cfg({"points_per_side": a.points_per_side, "points_per_batch": a.points_per_batch})
    fast_cfg = {**cfg, "impl": "fast", "fast_points_per_batch": a.fast_batch}
    if a.stability_margin is not None:
        fast_cfg["stability_margin"] = a.stability_margin
    print(f"device={dev} torch_threads={torch.get_num_threads()} n_images={len(images)} "
          f"sizes={[im.shape[:2] for im in images]}")
    print(f"settings: points_per_side={cfg['points_per_side']} pred_iou_thresh={cfg['pred_iou_thresh']} "
          f"stability_score_thresh={cfg['stability_score_thresh']} box_nms_thresh={cfg['box_nms_thresh']} "
          f"overlap={cfg['overlap']} stock_batch={cfg['points_per_batch']} fast_batch={fast_cfg['fast_points_per_batch']} "
          f"stability_margin={fast_cfg['stability_margin']}")

    # warm-up (kernels, allocator) on a small crop so the first timed image is not penalised
    with torch.no_grad():
        fast_masks(sam, images[0][:128, :128].copy(), {**fast_cfg, "points_per_side": 2})

    variants = [("fast", fast_cfg)]
    if a.skip_covered:
        variants.append(("fast+skip_covered", {**fast_cfg, "skip_covered": True}))
    t_stock, t_var = 0.0, {n: 0.0 for n, _ in variants}
    agree = {n: [] for n, _ in variants}
    stock_maps = []
    for k, im in enumerate(images):
        _sync(dev)
        t0 = time.perf_counter()
        s = stock_masks(sam, im, cfg)
        _sync(dev)
        t_stock += time.perf_counter() - t0
        ms = merge_masks(s["masks"], s["areas"], s["iou_preds"], cfg["overlap"])
        stock_maps.append(ms)
        line = f"image {k} {files[k].name} {im.shape[1]}x{im.shape[0]}: stock {time.perf_counter() - t0:.1f}s {int(ms.max())} segs"
        for name, vcfg in variants:
            _sync(dev)
            t0 = time.perf_counter()
            f = fast_masks(sam, im, vcfg)
            _sync(dev)
            dt = time.perf_counter() - t0
            t_var[name] += dt
            mf = merge_masks(f["masks"], f["areas"], f["iou_preds"], cfg["overlap"])
            agree[name].append(se_agreement(ms, mf))
            line += f" | {name} {dt:.1f}s {int(mf.max())} segs, {f['n_decoded']} prompts, agreement {agree[name][-1]:.4f}"
        print(line, flush=True)

    n = len(images)
    print(f"{'generator':<22}{'images/s':>10}{'s/image':>10}{'speedup':>9}{'agreement':>11}")
    print(f"{'stock':<22}{n / t_stock:>10.3f}{t_stock / n:>10.2f}{1.0:>9.2f}{1.0:>11.4f}")
    for name, _ in variants:
        print(f"{name:<22}{n / t_var[name]:>10.3f}{t_var[name] / n:>10.2f}{t_stock / t_var[name]:>9.2f}"
              f"{float(np.mean(agree[name])):>11.4f}")

    # embeddings: batched encoder throughput, then both stores with the real writer
    tmp = Path(tempfile.mkdtemp(prefix="s2c_bench_"))
    try:
        amp = torch.bfloat16 if dev.type == "cuda" else None
        with torch.no_grad():
            encode_images(sam, images[: min(2, n)])  # warm-up
            _sync(dev)
            t0 = time.perf_counter()
            embs = []
            for i in range(0, n, a.embed_batch):
                embs.append(encode_images(sam, images[i : i + a.embed_batch], amp_dtype=amp).cpu())
            _sync(dev)
            t_emb = time.perf_counter() - t0
        embs = torch.cat(embs)
        sha = cached_sha256(ckpt)
        ids = [f.stem for f in files]
        w = PartWriter(tmp / "embed.zarr", make_identity("embed", "vit_t", sha, embed_settings(), "bench"), ids, 0, 1)
        for i, (im, e) in enumerate(zip(images, embs)):
            w.write_embedding(i, e, im.shape[:2], sam_input_size(im.shape[:2]))
        emb_bytes = store_bytes(w.finalize()) / n
        w = PartWriter(tmp / "se.zarr", make_identity("se", "vit_t", sha, everything_settings(cfg), "bench"), ids, 0, 1)
        for i, m in enumerate(stock_maps):
            w.write_se(i, compact_dtype(m))
        se_bytes = store_bytes(w.finalize()) / n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"embedding: {n / t_emb:.2f} images/s (batch {a.embed_batch}, amp={'bf16' if amp else 'off'}), "
          f"{emb_bytes / 1e6:.2f} MB/image (raw fp16 {2 * 256 * 64 * 64 / 1e6:.2f} MB)")
    print(f"SE maps: {se_bytes / 1e3:.1f} kB/image")
    print(f"se_speedup={t_stock / t_var['fast']:.2f} agreement={float(np.mean(agree['fast'])):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
