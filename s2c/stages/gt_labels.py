"""Write a split's ground-truth label maps as PNGs (the seg ceiling's labels).

Training the segmentation network on these instead of the pseudo-labels, with the same schedule,
gives the ceiling that schedule can reach (``snakemake seg_ceiling``): a seg run far below its
pseudo-labels *and* far below this ceiling points at the pseudo-labels, one near both at the
schedule. Written atomically: the folder appears only complete.

    s2c gt_labels --data-cfg '{...}' --split train --out results/run/gt_labels/train
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from ..cli import parse_json_arg
from ..data import open_dataset
from ..errors import S2CError, cli_main
from ..io import atomic_path, save_label_png


def write_gt_labels(data_cfg: dict, split: str, out: str | Path, progress: bool = True) -> Path:
    """``<out>/<id>.png`` for every id of ``split``; S2CError naming the first image without GT."""
    ds = open_dataset(data_cfg, split)
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for image_id in tqdm(ds.ids, desc=f"gt_labels {split}", disable=not progress):
            m = ds.load_mask(image_id)
            if m is None:
                raise S2CError(f"image {image_id!r} of split {split!r} has no ground-truth mask; the seg ceiling "
                               "needs a split whose images all have masks (e.g. VOC train, COCO train)")
            save_label_png(m, tmp / f"{image_id}.png")
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c gt_labels", description=__doc__.split("\n")[0])
    p.add_argument("--data-cfg", required=True, help="JSON of the config's data section")
    p.add_argument("--split", required=True, help="split whose GT to write")
    p.add_argument("--out", type=Path, required=True, help="output folder (created atomically)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    print(f"wrote {write_gt_labels(parse_json_arg(a.data_cfg, '--data-cfg'), a.split, a.out, not a.no_progress)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
