"""Mean train_cam step time: baseline (L_CLS only) vs S2C with the SAM cache vs S2C online.

    .venv/bin/python bench/train_step.py                      # MobileSAM, CPU, 2 threads
    .venv/bin/python bench/train_step.py --sam vit_h --device cuda   # random ViT-H weights (timing)

All three modes train the same classifier on the same pre-collated batches; only the SAM side
differs: ``cached`` decodes prompts on stored embeddings of the original images (cache built once,
outside the timed region), ``online`` encodes every augmented crop like the reference code. Data:
coco-mini (../shared/data/coco-mini) when present, else a generated VOC-layout set. SE maps for SSC
are SLIC superpixels (≈ SAM's segment count; their content does not change the cost).
Last line: ``cached_over_baseline=<x> online_over_cached=<y>`` (the ratios whose modes ran).
``bench/train_step_profile.py`` takes the same flags and splits each mode's step into its parts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s2c import cam_training, objective  # noqa: E402
from s2c import train_utils as tu  # noqa: E402
from s2c.data.cam_train import to_device  # noqa: E402
from s2c.sections import resolve_cam  # noqa: E402


def build_caches(ds, ids, sam, model_type, tmp: Path):
    """Embedding + SE part stores for ``ids`` (untimed)."""
    from skimage.segmentation import slic

    from s2c.sam.cache import PartWriter, make_identity
    from s2c.sam.prompt import encode_image

    h = ds.image_list_hash()
    ew = PartWriter(tmp / "embed.zarr", make_identity("embed", model_type, "bench", {}, h), ids, 0, 1)
    sw = PartWriter(tmp / "se.zarr", make_identity("se", model_type, "bench", {}, h), ids, 0, 1)
    for i, id_ in enumerate(ids):
        im = ds.load_image(id_)
        emb, inp = encode_image(sam, im)
        ew.write_embedding(i, emb.cpu(), im.shape[:2], inp)
        sw.write_se(i, slic(im, n_segments=60, start_label=1))
    return ew.finalize(), sw.finalize()


class _Subset:
    """A SegDataset restricted to the benchmark's ids."""

    def __init__(self, ds, ids):
        self._ds, self.ids = ds, list(ids)

    def __getattr__(self, k):
        return getattr(self._ds, k)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sam", default="vit_t", help="SAM type: vit_t (MobileSAM weights) or vit_b/l/h (random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up step)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--output-stride", type=int, default=32)
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--prompt-cam", default=None, choices=["step", "multiscale"],
                   help="cam.cpm.prompt_cam (default: the trainer's, multiscale at cam.cpm.scales)")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="cam.cpm.scales of the multiscale prompting CAM (default: the trainer's, the reference's four)")
    p.add_argument("--prompt-batch", type=int, default=None,
                   help="cam.cpm.prompt_batch: images per prompting-CAM forward (default: the trainer's, 1 on CPU)")
    p.add_argument("--batching", default=None, choices=["pad", "group"], help="cam.cpm.batching (default: the trainer's)")
    p.add_argument("--ssc-size", type=int, default=None, help="cam.ssc.size (default: the crop, as the paper)")
    p.add_argument("--channels-last", action="store_true",
                   help="cam.channels_last: the classifier in channels-last memory (all modes)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="cam.micro_batch: images per forward/backward, gradients accumulated (all modes)")
    p.add_argument("--workdir", type=Path, default=None, help="reuse caches built here by an earlier run")
    p.add_argument("--modes", default="baseline,cached,online",
                   help="comma-separated subset to time")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = tu.select_device(a.device)

    from s2c.data import open_dataset
    from s2c.data.cam_train import CAMTrainDataset, collate
    from s2c.models import build_classifier
    from s2c.sam.build import build_sam
    from s2c.sam.cache import EmbeddingReader, SEMapReader

    tmp = a.workdir or Path(tempfile.mkdtemp(prefix="s2c_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    coco = REPO.parent / "shared" / "data" / "coco-mini"
    if (coco / "annotations" / "instances_train.json").is_file():
        dcfg = {"kind": "coco", "root": str(coco), "class_set": "voc20", "cache_dir": str(tmp / "dc")}
    else:
        from s2c.data.synthetic import make_synthetic_voc

        n_syn = max(16, a.batch_size * (a.steps + 1))  # every timed batch needs its own images
        dcfg = {"kind": "voc", "root": str(make_synthetic_voc(tmp / "voc", n_train=n_syn, n_val=1, size=400, seed=0)),
                "class_set": "voc20", "cache_dir": str(tmp / "dc")}
    ds = open_dataset(dcfg, "train")
    n = a.batch_size * (a.steps + 1)
    ids = ds.ids[:n]
    if a.sam == "vit_t":
        sam, _ = cam_training.load_sam_for_training({"model_type": "vit_t"}, a.weights_dir, dev)
    else:
        torch.manual_seed(0)
        sam = build_sam(a.sam, None, dev)  # random weights: timing only
    t = time.perf_counter()
    if (tmp / "embed.zarr").exists() and (tmp / "se.zarr").exists():
        emb, se = tmp / "embed.zarr", tmp / "se.zarr"
    else:
        emb, se = build_caches(ds, ids, sam, a.sam, tmp)
    print(f"data: {dcfg['kind']} {len(ids)} images; cache built in {time.perf_counter() - t:.1f}s (untimed)")

    sub = _Subset(ds, ids)
    cpm = {"start_epoch": 0, **({"prompt_cam": a.prompt_cam} if a.prompt_cam else {}),
           **({"batching": a.batching} if a.batching else {}),
           **({"scales": a.scales} if a.scales else {}),
           **({"prompt_batch": a.prompt_batch} if a.prompt_batch else {})}
    base_cfg = {"augment": {"crop_size": a.crop}, "cpm": cpm,
                "ssc": {"size": a.ssc_size}, "micro_batch": a.micro_batch}
    data = CAMTrainDataset(sub, base_cfg["augment"], EmbeddingReader(emb), SEMapReader(se), seed=0)
    batches = [collate([data[i] for i in range(k, k + a.batch_size)]) for k in range(0, n, a.batch_size)]
    batches = [to_device(b, dev) for b in batches]

    try:
        model0 = build_classifier({"backbone": a.backbone, "output_stride": a.output_stride, "pretrained": True},
                                  ds.num_classes, a.weights_dir)
    except Exception as e:  # no weights on this machine: random weights time the same
        print(f"(pretrained backbone unavailable: {e}; using random weights)")
        model0 = build_classifier({"backbone": a.backbone, "output_stride": a.output_stride, "pretrained": False},
                                  ds.num_classes, None)
    if a.channels_last:
        model0 = model0.to(memory_format=torch.channels_last)
    state = {k: v.clone() for k, v in model0.state_dict().items()}

    def run(mode: str) -> list[float]:
        cfg = resolve_cam({**base_cfg, "ablation": "baseline"} if mode == "baseline" else
                             {**base_cfg, "sam_mode": mode})
        model0.load_state_dict(state)
        model = model0.to(dev).train()
        opt = torch.optim.SGD(model.param_groups(10.0), lr=1e-3)
        times = []
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        for b in batches:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            for mb, share in tu.micro_batches(b, cfg["micro_batch"]):  # the trainer's accumulation
                parts = objective.compute_losses(model, mb, cfg, sam, use_cpm=cfg["cpm"]["enabled"])
                (parts["loss"] * share).backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peaks[mode] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
        return times[1:]  # drop the warm-up step

    modes = a.modes.split(",")
    if not set(modes) <= {"baseline", "cached", "online"}:
        p.error(f"--modes: unknown mode in {a.modes!r}")
    peaks: dict[str, float | None] = {}  # peak GPU memory of each mode (MiB; SAM, model, batches included)
    res = {m: run(m) for m in modes}
    print(f"{a.backbone} os{a.output_stride}, batch {a.batch_size}, {a.crop}² crops, SAM {a.sam}, "
          f"device {dev}, threads {a.threads}, prompt_cam {a.prompt_cam or 'default'}, "
          f"prompt_batch {a.prompt_batch or 'default'}, ssc.size {a.ssc_size}, "
          f"channels_last {a.channels_last}, micro_batch {a.micro_batch}")
    print(f"{'mode':10s} {'mean step s':>12s} {'min':>8s} {'max':>8s} {'peak MiB':>9s}")
    for m, ts in res.items():
        pk = f"{peaks[m]:9.0f}" if peaks[m] is not None else f"{'-':>9s}"
        print(f"{m:10s} {statistics.mean(ts):12.3f} {min(ts):8.3f} {max(ts):8.3f} {pk}")
    mean = {m: statistics.mean(ts) for m, ts in res.items()}
    ratios = [f"{k}_over_{b}={mean[k] / mean[b]:.2f}" for k, b in (("cached", "baseline"), ("online", "cached"))
              if k in mean and b in mean]
    if ratios:
        print(" ".join(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
