"""Compact embedding cache: bytes per image, CPM class-mask IoU and read throughput, fp16 vs int8.

    nice -n 10 .venv/bin/python bench/cache_codec.py --workdir cache/codec_bench \\
        [--coco-root ../shared/data/coco-mini] [--split train] [--levels 127,63,31] [--workers 0,2,4]

1. Builds the MobileSAM fp16 embedding store of the split (``s2c.stages.sam_embed``; reused when
   ``<workdir>/embed_fp16.zarr`` exists — a killed build resumes from its ``.partial``).
2. Transcodes it (:func:`s2c.sam.cache.transcode_embeddings`) to the int8 layout at each of
   ``--levels``: 127 = codec ``int8``, 31 = codec ``int6`` (the two the config offers), others for
   the record.
3. Per codec: bytes per image on disk (the store's allocated blocks ÷ images), single-reader read
   throughput (images/s, cold reader, warm page cache), and the CPM class-mask IoU against fp16:
   per GT class of each image one positive point at the maximum of the class mask's distance
   transform (CPM's single-peak mode), plus one multi-point prompt with a point in each of the
   class's (up to 4 largest) connected regions; SAM's output 2 (CPM's choice) at original size,
   thresholded at 0; IoU per (image, class) of codec vs fp16 (both empty counts 1); mean and 5th
   percentile.
4. Loader throughput: ``s2c.data.cam_train.CAMTrainDataset`` (trainer's default augmentation) with
   the embedding store and an SE store (SLIC superpixels, built once: only the read cost matters)
   through the trainer's DataLoader settings (batch 8, its collate) with 0/2/4 workers.

Prints one table; the last line holds ``key=value`` figures. ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s2c.sam.cache import (  # noqa: E402
    EmbeddingReader,
    PartWriter,
    SEMapReader,
    make_identity,
    read_store_attrs,
    transcode_embeddings,
)


def store_du(path: Path) -> tuple[int, int]:
    """(allocated bytes as ``du`` counts them, apparent bytes) of a store folder."""
    du = ap = 0
    for f in path.rglob("*"):
        if f.is_file():
            st = f.stat()
            du += st.st_blocks * 512
            ap += st.st_size
    return du, ap


def class_prompts(label_map: np.ndarray, num_classes: int, max_regions: int = 4) -> list[tuple[int, str, np.ndarray]]:
    """[(class, "single"|"multi", points (K, 2) (x, y))] for each GT class of a label map."""
    from scipy import ndimage

    out = []
    for c in range(num_classes):
        m = label_map == c + 1
        if not m.any():
            continue
        dt = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
        out.append((c, "single", np.array([[x + 0.5, y + 0.5]], np.float32)))
        lab, n = ndimage.label(m)
        if n > 1:
            sizes = ndimage.sum(m, lab, range(1, n + 1))
            pts = []
            for r in np.argsort(-sizes)[:max_regions] + 1:
                d = np.where(lab == r, dt, 0)
                y, x = np.unravel_index(int(np.argmax(d)), d.shape)
                pts.append([x + 0.5, y + 0.5])
            out.append((c, "multi", np.array(pts, np.float32)))
    return out


def masks_of(sam, emb: torch.Tensor, prompts, meta: dict) -> np.ndarray:
    """bool (P, H, W): SAM's output 2 of each prompt at original size, logits > 0."""
    from s2c.sam.prompt import decode_prompts

    logits, _ = decode_prompts(sam, emb, [p for _, _, p in prompts], meta["orig_size"], meta["input_size"],
                               multimask_index=2)
    return (logits > 0).cpu().numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def read_throughput(store: Path, ids: list[str], repeats: int = 2) -> float:
    """Images/s of ``EmbeddingReader.embedding`` over ``ids`` (a fresh reader each pass; best pass)."""
    best = 0.0
    for _ in range(repeats):
        r = EmbeddingReader(store)
        t = time.perf_counter()
        for id_ in ids:
            r.embedding(id_)
        best = max(best, len(ids) / (time.perf_counter() - t))
    return best


def build_se_store(ds, ids: list[str], out: Path, ident: dict) -> Path:
    """SE part store of SLIC superpixels (≈ SAM's segment count; the loader only pays their reads)."""
    if out.exists():
        return out
    from skimage.segmentation import slic

    w = PartWriter(out, make_identity("se", ident["model_type"], ident["checkpoint_sha256"], {"slic": 60},
                                      ident["image_list_hash"]), ids, 0, 1)
    for i in w.todo():
        w.write_se(i, slic(ds.load_image(ids[i]), n_segments=60, start_label=1))
    return w.finalize()


def loader_throughput(ds, embed: Path, se: Path, workers: int, batch_size: int, max_batches: int | None) -> float:
    """Images/s the trainer's DataLoader streams (CAMTrainDataset, its collate), workers started
    inside the timed region (the trainer restarts them every epoch: persistent_workers=False)."""
    from torch.utils.data import DataLoader

    from s2c.data.cam_train import CAMTrainDataset, collate
    from s2c.sections import resolve_cam as resolve_cfg

    cfg = resolve_cfg({})
    data = CAMTrainDataset(ds, cfg["augment"], EmbeddingReader(embed), SEMapReader(se), seed=0)
    loader = DataLoader(data, batch_size, shuffle=True, num_workers=workers, collate_fn=collate, drop_last=True,
                        persistent_workers=False, generator=torch.Generator().manual_seed(0))
    n, t = 0, time.perf_counter()
    for k, b in enumerate(loader):
        n += len(b["id"])
        if max_batches and k + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t)


def ensure_fp16_store(a, ds, out: Path) -> Path:
    if out.exists():
        return out
    cmd = [sys.executable, "-m", "s2c.stages.sam_embed", "--data-cfg", json.dumps(a.data_cfg), "--split", a.split,
           "--out", str(out), "--weights-dir", str(a.weights_dir), "--device", a.device,
           "--cfg", json.dumps({"model_type": a.model_type, "batch_size": 2, "num_workers": 1})]
    print("building the fp16 store:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, stdout=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=REPO / "cache" / "codec_bench", help="stores are built / reused here")
    p.add_argument("--coco-root", type=Path, default=REPO.parent / "shared" / "data" / "coco-mini")
    p.add_argument("--data-cfg", type=json.loads, default=None, help="data section as JSON (default: coco-mini voc20)")
    p.add_argument("--split", default="train")
    p.add_argument("--n-images", type=int, default=None, help="first N ids only (default: all)")
    p.add_argument("--levels", default="127,63,31", help="quantisation levels of the int8 layout to measure (127 = codec int8, 31 = int6)")
    p.add_argument("--no-iou", action="store_true", help="skip the IoU pass (bytes, read and loader figures only)")
    p.add_argument("--workers", default="0,2,4", help="DataLoader worker counts for the loader figure")
    p.add_argument("--loader-batches", type=int, default=None, help="batches per loader measurement (default: one epoch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--model-type", default="vit_t", help="SAM decoder for the IoU (vit_t = MobileSAM; vit_test: tests only)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="also write the printed table here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.data_cfg is None:
        a.data_cfg = {"kind": "coco", "root": str(a.coco_root), "class_set": "voc20"}
    buf = io.StringIO()
    with redirect_stdout(_Tee(sys.stdout, buf)):
        rc = run(a)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(buf.getvalue())
    return rc


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def run(a) -> int:
    from s2c.data import open_dataset
    from s2c.sam.build import build_sam, resolve_device
    from s2c.weights import resolve_sam_checkpoint

    a.workdir.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(a.data_cfg, a.split)
    fp16 = ensure_fp16_store(a, ds, a.workdir / "embed_fp16.zarr")
    attrs = read_store_attrs(fp16)
    skipped = {s["id"] for s in attrs.get("skipped", [])}
    ids = [i for i in attrs["ids"] if i not in skipped][: a.n_images]
    stores = {"fp16": fp16}
    for lv in [int(x) for x in a.levels.split(",") if x]:
        name = {127: "int8", 31: "int6"}.get(lv, f"int8/L{lv}")
        out = a.workdir / f"embed_int8_L{lv}.zarr"
        if not out.exists():
            codec = name if name in ("int8", "int6") else "int8"
            transcode_embeddings(fp16, out, codec, lv)
        stores[name] = out
    dev = resolve_device(a.device)
    torch.manual_seed(0)  # vit_test: random weights (tests)
    ckpt = None if a.model_type == "vit_test" else resolve_sam_checkpoint(a.model_type, None, a.weights_dir)
    sam = build_sam(a.model_type, ckpt, dev)

    readers = {k: EmbeddingReader(v) for k, v in stores.items()}
    ious = {k: {"single": [], "multi": []} for k in stores if k != "fp16"}
    errs = {k: [] for k in ious}
    n_cls = 0
    t0 = time.perf_counter()
    for id_ in [] if a.no_iou else ids:
        gt = ds.load_mask(id_)
        prompts = class_prompts(gt, ds.num_classes)
        if not prompts:
            continue
        n_cls += sum(1 for _, kind, _ in prompts if kind == "single")
        meta = readers["fp16"].meta(id_)
        e_ref = readers["fp16"].embedding(id_)
        ref = masks_of(sam, e_ref, prompts, meta)
        for k in ious:
            e = readers[k].embedding(id_)
            errs[k].append(float((e.float() - e_ref.float()).abs().max() / e_ref.float().abs().max()))
            got = masks_of(sam, e, prompts, meta)
            for (_, kind, _), m_ref, m in zip(prompts, ref, got):
                ious[k][kind].append(iou(m_ref, m))
    t_iou = time.perf_counter() - t0

    n_train = len(ids)
    print(f"data: {a.data_cfg['kind']} {a.data_cfg.get('root')} split {a.split}: {n_train} images, {n_cls} (image, class) "
          f"pairs; SAM {a.model_type} decoder on {dev}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; "
          f"IoU pass {t_iou:.0f}s")
    se = build_se_store(ds, ids, a.workdir / "se_slic.zarr", attrs)

    sub = _Subset(ds, ids)
    workers = [int(x) for x in a.workers.split(",") if x != ""]
    rows, figs = [], {}
    for k, path in stores.items():
        du, ap = store_du(path)
        rt = read_throughput(path, ids)
        lt = {w: loader_throughput(sub, path, se, w, a.batch_size, a.loader_batches) for w in workers}
        row = {"codec": k, "mb": du / n_train / 1e6, "mb_ap": ap / n_train / 1e6, "read": rt, **{f"w{w}": v for w, v in lt.items()}}
        if k in ious and ious[k]["single"]:
            s, m = np.array(ious[k]["single"]), np.array(ious[k]["multi"])
            row.update(iou=s.mean(), p5=np.percentile(s, 5), minv=s.min(), iou_m=m.mean() if m.size else float("nan"),
                       p5_m=np.percentile(m, 5) if m.size else float("nan"), rel=max(errs[k]))
        rows.append(row)
    hdr = (f"{'codec':<10}{'MB/img du':>10}{'apparent':>9}{'read img/s':>11}{'IoU mean':>9}{'IoU p5':>8}{'IoU min':>8}"
           f"{'multi mean':>11}{'multi p5':>9}{'max |err|':>10}" + "".join(f"{f'loader w{w}':>11}" for w in workers))
    print(hdr)
    for r in rows:
        iou_cols = (f"{r['iou']:>9.4f}{r['p5']:>8.4f}{r['minv']:>8.4f}{r['iou_m']:>11.4f}{r['p5_m']:>9.4f}{r['rel']:>10.4f}"
                    if "iou" in r else f"{'1 (ref)' if r['codec'] == 'fp16' else '-':>9}{'':>8}{'':>8}{'':>11}{'':>9}{'':>10}")
        print(f"{r['codec']:<10}{r['mb']:>10.3f}{r['mb_ap']:>9.3f}{r['read']:>11.1f}{iou_cols}"
              + "".join(f"{r[f'w{w}']:>11.1f}" for w in workers))
    print("MB/img du: allocated bytes of the store ÷ images; max |err|: max over images of max|int8 − fp16| ÷ max|fp16|;"
          " IoU: class mask of one point at the distance-transform peak (multi: one point per region, "
          "classes with ≥ 2 regions); loader: images/s through CAMTrainDataset + DataLoader "
          f"(batch {a.batch_size}, embedding + SE reads, augmentation, collate; worker start-up included)")
    for r in rows:
        tag = r["codec"].replace("/", "_")
        figs[f"{tag}_mb_per_image"] = round(r["mb"], 3)
        figs[f"{tag}_read_ips"] = round(r["read"], 1)
        for w in workers:
            figs[f"{tag}_loader_w{w}_ips"] = round(r[f"w{w}"], 1)
        if "iou" in r:
            figs[f"{tag}_iou_mean"] = round(float(r["iou"]), 4)
            figs[f"{tag}_iou_p5"] = round(float(r["p5"]), 4)
    print(" ".join(f"{k}={v}" for k, v in figs.items()))
    return 0


class _Subset:
    """A SegDataset restricted to the measured ids."""

    def __init__(self, ds, ids):
        self._ds, self.ids = ds, list(ids)

    def __getattr__(self, k):
        return getattr(self._ds, k)


if __name__ == "__main__":
    raise SystemExit(main())
