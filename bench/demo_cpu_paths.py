"""How far the demo moves when the CPU takes another vector code path: two finished demo runs
(folders holding ``cache/`` and ``results/demo/``), compared stage by stage.

    python bench/demo_cpu_paths.py RUN_A RUN_B

Prints, per stage, how much of its output differs (fp16 embedding elements, SE maps, CAM arrays,
pseudo-label pixels) and the three mIoUs side by side. bench/demo_cpu_paths.sh makes the two runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import zarr

from s2c.io import read_label_png
from s2c.stages.summary import ROWS

CACHE = "cache/demo_voc/vit_t/train_aug"
METRICS = ("cam_train", "pseudo_train", "seg_val")


def zarr_arrays(path: Path) -> dict[str, np.ndarray]:
    def walk(g, prefix=""):
        for k, v in g.members():
            if isinstance(v, zarr.Group):
                yield from walk(v, f"{prefix}{k}/")
            else:
                yield f"{prefix}{k}", np.asarray(v[...])
    return dict(walk(zarr.open_group(str(path), mode="r")))


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, v: out.__setitem__(k, v[...]) if isinstance(v, h5py.Dataset) else None)
    return out


def element_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[int, int, int, int]:
    """(arrays differing, arrays, elements differing, elements) over the keys of ``a``."""
    n_arr = d_arr = n_el = d_el = 0
    for k, x in a.items():
        y = b[k]
        same_shape = x.shape == y.shape
        d = int((x != y).sum()) if same_shape else x.size
        n_arr, d_arr, n_el, d_el = n_arr + 1, d_arr + bool(d), n_el + x.size, d_el + d
    return d_arr, n_arr, d_el, n_el


def main(a: str, b: str) -> int:
    ra, rb = Path(a), Path(b)
    rows = []
    for stage, load, rel in (("SAM embeddings (fp16)", zarr_arrays, f"{CACHE}/embed.part0.zarr"),
                             ("SE maps", zarr_arrays, next((ra / CACHE).glob("se-*.part0.zarr")).relative_to(ra)),
                             ("CAM store", h5_arrays, "results/demo/cams/train_aug.h5")):
        da, na, de, ne = element_diff(load(ra / rel), load(rb / rel))
        rows.append((stage, f"{da}/{na} arrays", f"{100 * de / ne:.3f}% of elements"))
    pa = sorted((ra / "results/demo/pseudo/train_aug").glob("*.png"))
    diffs = [float((read_label_png(p) != read_label_png(rb / p.relative_to(ra))).mean()) for p in pa]
    rows.append(("pseudo-labels", f"{sum(d > 0 for d in diffs)}/{len(pa)} images",
                 f"{100 * float(np.mean(diffs)):.3f}% of pixels"))
    print(f"{'stage':<24} {'differ':>16} {'':>20}")
    print("-" * 62)
    for r in rows:
        print(f"{r[0]:<24} {r[1]:>16} {r[2]:>20}")
    print(f"\n{'metric':<24} {'A':>8} {'B':>8} {'B - A':>8}")
    print("-" * 51)
    for stem in METRICS:
        ma, mb = (json.loads((r / f"results/demo/metrics/{stem}.json").read_text())["miou"] for r in (ra, rb))
        print(f"{ROWS[stem]:<24} {ma:>8.2f} {mb:>8.2f} {mb - ma:>+8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
