"""GPU figures in one table: train_cam step time and peak memory (baseline / cached /
online, MobileSAM and ViT-H), segment-everything and embedding images/s, the projected wall time of
the paper's VOC schedule beside the reference's 8 h on 2×V100.

    .venv/bin/python bench/gpu_figures.py --device cuda            # ~4-8 min on one H200
    .venv/bin/python bench/gpu_figures.py --device cpu --quick     # end-to-end check without a GPU

train_cam steps come from ``bench/train_step.py`` (one subprocess per SAM; its table gives mean step
time and peak GPU memory of each mode). ViT-H and the ``--quick`` stand-in ViT-B use random weights
(timing only); MobileSAM uses its real weights (``weights/mobile_sam.pt``: carry ``weights`` to a
machine without network). SE images/s: the fast generator (``s2c.sam.everything.se_map``) at 32
points per side decoding from a cached MobileSAM embedding (the decoder is the same module for every
SAM type, so the figure holds for a ViT-H cache too); embedding images/s: batched
``s2c.sam.prompt.encode_images`` (bf16 autocast on CUDA, as ``sam.amp: true``). Images: the
coco-mini sample when ``--coco-root`` exists, else generated ones (then the SE count of masks, and
so its time, is not representative; the table says which).

Projection: the paper's VOC schedule is 6 epochs of 10,582 images at batch 8 = 7,932 steps, times
the ViT-H step time; "cached" adds the one-off cache build (10,582 images embedded + segmented).
Goals (ViT-H): online ÷ cached ≥ 10, cached ÷ baseline ≤ 1.5, cached peak < 12 GB at batch 8.

Writes ``<out-dir>/gpu_<device name>[_quick].tsv`` and prints the table; the last line holds
``key=value`` figures.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOC_IMAGES, VOC_EPOCHS, VOC_BATCH = 10_582, 6, 8
REFERENCE_HOURS = 8.0  # the reference implementation's CAM training, 2×V100 (paper)
GOAL_ONLINE_OVER_CACHED, GOAL_CACHED_OVER_BASELINE, GOAL_PEAK_GB = 10.0, 1.5, 12.0


def run_train_step(a, sam: str) -> dict:
    """``bench/train_step.py`` for one SAM: {mode: (mean step s, peak MiB or None)}."""
    cmd = [sys.executable, str(REPO / "bench" / "train_step.py"), "--sam", sam, "--device", a.device,
           "--modes", "baseline,cached,online", "--steps", str(a.steps), "--batch-size", str(a.batch_size),
           "--crop", str(a.crop), "--backbone", a.backbone, "--output-stride", str(a.output_stride),
           "--threads", str(a.threads), "--weights-dir", str(a.weights_dir)] + (["--channels-last"] if a.channels_last else [])
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    sys.stderr.write(r.stdout[-4000:])
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"bench/train_step.py --sam {sam} failed (exit {r.returncode})")
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^(baseline|cached|online)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+(\S+)\s*$", line)
        if m:
            out[m.group(1)] = (float(m.group(2)), None if m.group(3) == "-" else float(m.group(3)))
    if set(out) != {"baseline", "cached", "online"}:
        raise SystemExit(f"could not read the table of bench/train_step.py --sam {sam}:\n{r.stdout[-2000:]}")
    print(f"  train_step --sam {sam}: {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return out


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mib(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


def load_images(a) -> tuple[list[np.ndarray], str]:
    from s2c.io import read_image

    files = sorted((a.coco_root / "val").glob("*.jpg"))[: a.n_images]
    if files:
        return [read_image(f) for f in files], f"coco-mini val ({len(files)})"
    rng = np.random.default_rng(0)
    side = 160 if a.quick else 480
    ims = []
    for _ in range(a.n_images):  # blocks of colour: a few segments per image
        im = np.zeros((side, side * 4 // 3, 3), np.uint8)
        for _ in range(6):
            y, x = rng.integers(0, side - 32, 2)
            im[y : y + rng.integers(24, side // 2), x : x + rng.integers(24, side // 2)] = rng.integers(0, 255, 3)
        ims.append(im)
    return ims, f"generated ({len(ims)}; SE time not representative)"


def build(model_type: str, a, dev: torch.device):
    from s2c.sam.build import build_sam
    from s2c.weights import ensure_mobile_sam

    if model_type == "vit_t":
        return build_sam("vit_t", ensure_mobile_sam(a.weights_dir), dev)
    torch.manual_seed(0)
    return build_sam(model_type, None, dev)  # random weights: timing only


def embed_ips(sam, images, dev, batch: int) -> tuple[float, float | None, torch.Tensor]:
    """(images/s, peak MiB, embeddings) of the batched encoder."""
    from s2c.sam.prompt import encode_images

    amp = torch.bfloat16 if dev.type == "cuda" else None
    with torch.no_grad():
        encode_images(sam, images[:1], amp_dtype=amp)  # warm-up
        reset_peak(dev)
        t = time.perf_counter()
        embs = [encode_images(sam, images[i : i + batch], amp_dtype=amp) for i in range(0, len(images), batch)]
        sync(dev)
        dt = time.perf_counter() - t
    return len(images) / dt, peak_mib(dev), torch.cat(embs)


def se_ips(sam, images, embs, dev, points_per_side: int) -> tuple[float, float | None, float]:
    """(images/s, peak MiB, mean segments) of the fast SE generator on cached embeddings."""
    from s2c.defaults import resolve_everything_cfg
    from s2c.sam.everything import se_map

    cfg = resolve_everything_cfg({"impl": "fast", "points_per_side": points_per_side})
    with torch.no_grad():
        se_map(sam, images[0], cfg, embedding=embs[0])  # warm-up
        reset_peak(dev)
        t = time.perf_counter()
        segs = [int(se_map(sam, im, cfg, embedding=e).max()) for im, e in zip(images, embs)]
        sync(dev)
        dt = time.perf_counter() - t
    return len(images) / dt, peak_mib(dev), float(np.mean(segs))


def fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true",
                   help="CPU check: 2 steps at batch 2, 128² crops, efficientnet_lite0, ViT-B instead of ViT-H, "
                        "2 small images, 8 points per side")
    p.add_argument("--big-sam", default=None, help="the large SAM timed beside MobileSAM (default vit_h; --quick: vit_b)")
    p.add_argument("--steps", type=int, default=None, help="timed train_cam steps per mode (default 5; --quick 2)")
    p.add_argument("--batch-size", type=int, default=None, help=f"train_cam batch (default {VOC_BATCH}; --quick 2)")
    p.add_argument("--crop", type=int, default=None, help="train_cam crop (default 512; --quick 128)")
    p.add_argument("--backbone", default=None, help="classifier (default resnet38d os8, the paper's; --quick efficientnet_lite0 os32)")
    p.add_argument("--output-stride", type=int, default=None)
    p.add_argument("--n-images", type=int, default=None, help="images for the SE / embedding figures (default 8; --quick 2)")
    p.add_argument("--points-per-side", type=int, default=None, help="SE grid (default 32; --quick 8)")
    p.add_argument("--embed-batch", type=int, default=4)
    p.add_argument("--channels-last", action="store_true", help="train_step --channels-last (cam.channels_last)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    p.add_argument("--coco-root", type=Path, default=REPO.parent / "shared" / "data" / "coco-mini")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    a = p.parse_args(argv)
    q = a.quick
    a.big_sam = a.big_sam or ("vit_b" if q else "vit_h")
    a.steps = a.steps or (2 if q else 5)
    a.batch_size = a.batch_size or (2 if q else VOC_BATCH)
    a.crop = a.crop or (128 if q else 512)
    a.backbone = a.backbone or ("efficientnet_lite0" if q else "resnet38d")
    a.output_stride = a.output_stride or (32 if a.backbone == "efficientnet_lite0" else 8)
    a.n_images = a.n_images or (2 if q else 8)
    a.points_per_side = a.points_per_side or (8 if q else 32)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu (with --quick for a short check)")
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    t_all = time.perf_counter()

    steps = {s: run_train_step(a, s) for s in ("vit_t", a.big_sam)}

    images, img_src = load_images(a)
    figs: dict[str, dict] = {}
    for mt in ("vit_t", a.big_sam):
        t = time.perf_counter()
        sam = build(mt, a, dev)
        ips, pk, embs = embed_ips(sam, images, dev, a.embed_batch)
        figs[mt] = {"embed_ips": ips, "embed_peak": pk}
        if mt == "vit_t":  # the decoder is the same module for every SAM type: SE once, on real weights
            s_ips, s_pk, s_n = se_ips(sam, images, embs, dev, a.points_per_side)
            figs[mt].update(se_ips=s_ips, se_peak=s_pk, se_segments=s_n)
        del sam, embs
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print(f"  {mt} embed/SE: {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)

    # the paper's schedule is at batch 8 (7,932 steps); another --batch-size projects the same epochs
    n_steps = VOC_EPOCHS * (VOC_IMAGES // a.batch_size)
    rows = []  # (figure, vit_t, big, goal, met)

    def add(name, vt, big, goal="", met=""):
        rows.append((name, vt, big, goal, met))

    for mode in ("baseline", "cached", "online"):
        add(f"train_cam {mode} step s", fmt(steps["vit_t"][mode][0]), fmt(steps[a.big_sam][mode][0]))
    for mode in ("baseline", "cached", "online"):
        pk_big = steps[a.big_sam][mode][1]
        goal = met = ""
        if mode == "cached":
            goal = f"< {GOAL_PEAK_GB:g} GB at batch 8"
            met = "-" if pk_big is None else ("yes" if pk_big / 1024 < GOAL_PEAK_GB and a.batch_size == 8 else "no")
        add(f"train_cam {mode} peak GPU MiB", fmt(steps["vit_t"][mode][1], ".0f"), fmt(pk_big, ".0f"), goal, met)
    ratio = {s: {"cb": steps[s]["cached"][0] / steps[s]["baseline"][0], "oc": steps[s]["online"][0] / steps[s]["cached"][0]}
             for s in steps}
    add("cached / baseline", fmt(ratio["vit_t"]["cb"], ".2f"), fmt(ratio[a.big_sam]["cb"], ".2f"),
        f"≤ {GOAL_CACHED_OVER_BASELINE:g} on GPU", ("yes" if ratio[a.big_sam]["cb"] <= GOAL_CACHED_OVER_BASELINE else "no")
        if dev.type == "cuda" else "-")
    add("online / cached", fmt(ratio["vit_t"]["oc"], ".2f"), fmt(ratio[a.big_sam]["oc"], ".2f"),
        f"≥ {GOAL_ONLINE_OVER_CACHED:g} with ViT-H", ("yes" if ratio[a.big_sam]["oc"] >= GOAL_ONLINE_OVER_CACHED else "no")
        if a.big_sam == "vit_h" else "-")
    add(f"SE images/s ({a.points_per_side} pts/side, cached emb)", fmt(figs["vit_t"]["se_ips"], ".2f"),
        "= vit_t (same decoder)")
    add("SE peak GPU MiB", fmt(figs["vit_t"]["se_peak"], ".0f"), "")
    add("embedding images/s", fmt(figs["vit_t"]["embed_ips"], ".2f"), fmt(figs[a.big_sam]["embed_ips"], ".2f"))
    add("embedding peak GPU MiB", fmt(figs["vit_t"]["embed_peak"], ".0f"), fmt(figs[a.big_sam]["embed_peak"], ".0f"))
    proj = {}
    for s in steps:
        build_h = VOC_IMAGES / figs[s]["embed_ips"] / 3600 + VOC_IMAGES / figs["vit_t"]["se_ips"] / 3600
        proj[s] = {"cached": n_steps * steps[s]["cached"][0] / 3600, "build": build_h,
                   "online": n_steps * steps[s]["online"][0] / 3600, "baseline": n_steps * steps[s]["baseline"][0] / 3600}
    ref = f"reference {REFERENCE_HOURS:g} h on 2×V100"
    add(f"VOC schedule h: baseline ({VOC_EPOCHS}×{VOC_IMAGES} at batch {a.batch_size} = {n_steps} steps)", fmt(proj["vit_t"]["baseline"], ".2f"), fmt(proj[a.big_sam]["baseline"], ".2f"))
    add("VOC schedule h: cached train", fmt(proj["vit_t"]["cached"], ".2f"), fmt(proj[a.big_sam]["cached"], ".2f"), ref)
    add("VOC schedule h: cache build (embed + SE)", fmt(proj["vit_t"]["build"], ".2f"), fmt(proj[a.big_sam]["build"], ".2f"))
    add("VOC schedule h: cached train + build", fmt(proj["vit_t"]["cached"] + proj["vit_t"]["build"], ".2f"),
        fmt(proj[a.big_sam]["cached"] + proj[a.big_sam]["build"], ".2f"), ref)
    add("VOC schedule h: online", fmt(proj["vit_t"]["online"], ".2f"), fmt(proj[a.big_sam]["online"], ".2f"), ref)

    big_name = {"vit_h": "ViT-H (vit_h)", "vit_b": "ViT-B (vit_b)", "vit_l": "ViT-L (vit_l)"}.get(a.big_sam, a.big_sam)
    head = ("figure", "MobileSAM (vit_t)", big_name + " random w.", "goal", "met")
    w0 = max(len(r[0]) for r in rows + [head])
    title = (f"GPU figures on {gpu}{' (--quick: CPU check, not GPU figures)' if q else ''}: train_cam {a.backbone} "
             f"os{a.output_stride}, batch {a.batch_size}, {a.crop}² crops, {a.steps} timed steps per mode; "
             f"SE/embedding on {img_src}; torch {torch.__version__}; total {time.perf_counter() - t_all:.0f}s")
    print(title)
    print(f"{head[0]:<{w0}}  {head[1]:>18}  {head[2]:>22}  {head[3]:<26}{head[4]}")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:>18}  {r[2]:>22}  {r[3]:<26}{r[4]}")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", gpu).strip("-").lower() + ("_quick" if q else "")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    tsv = a.out_dir / f"gpu_{name}.tsv"
    with open(tsv, "w") as f:
        f.write(f"# {title}\n")
        f.write("\t".join(head) + "\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    print(f"wrote {tsv}")
    print(f"gpu={name} online_over_cached={ratio[a.big_sam]['oc']:.2f} cached_over_baseline={ratio[a.big_sam]['cb']:.2f} "
          f"cached_peak_mib={fmt(steps[a.big_sam]['cached'][1], '.0f')} se_ips={figs['vit_t']['se_ips']:.2f} "
          f"embed_ips_{a.big_sam}={figs[a.big_sam]['embed_ips']:.2f} voc_cached_h={proj[a.big_sam]['cached']:.2f} "
          f"voc_online_h={proj[a.big_sam]['online']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
