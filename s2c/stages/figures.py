"""Report figures (matplotlib, Agg backend): CAM overlays, image | GT | label panels, per-class IoU
bars, loss curves. Snakemake rules list them as ``report()`` outputs.

CLI::

    s2c figures cams   --cams STORE --data-cfg JSON --split S --out PNG [--n 4]
    s2c figures labels --pred DIR  --data-cfg JSON --split S --out PNG [--n 4] [--title T]
    s2c figures bars   --metrics JSON --out PNG [--title T]
    s2c figures loss   --csv CSV --out PNG [--columns loss loss_cls ...] [--x step]
"""

from __future__ import annotations

import argparse
import csv as _csv
from pathlib import Path
from typing import Sequence

from ..cam_store import CAMStore
from ..cli import parse_json_arg
from ..data import open_dataset
from ..errors import S2CError, cli_main
from ..io import read_label_png
from ..plots import cam_overlay, colorize, panel_grid, plot_csv, plot_iou_bars

__all__ = ["cam_overlay", "colorize", "plot_iou_bars", "plot_cams", "plot_labels", "plot_loss", "main"]


def plot_cams(cams: str | Path, data_cfg: dict, split: str, png: str | Path, n: int = 4,
              max_classes: int = 3) -> Path:
    """For the first ``n`` images: the image, then a jet overlay of each labelled class's CAM."""
    ds = open_dataset(data_cfg, split)
    store = CAMStore(cams)
    rows = []
    try:
        for image_id in ds.ids[:n]:
            image = ds.load_image(image_id)
            c, k = store.get(image_id)
            row = [(image_id, image)]
            row += [(ds.class_names[ci], cam_overlay(image, c[j]))
                    for j, ci in enumerate(k[:max_classes])]
            rows.append(row)
    finally:
        store.close()
    return panel_grid(rows, png)


def plot_labels(pred: str | Path, data_cfg: dict, split: str, png: str | Path, n: int = 4,
                title: str = "label") -> Path:
    """For the first ``n`` images: image | GT (when available) | ``pred/<id>.png``."""
    ds = open_dataset(data_cfg, split)
    rows = []
    for image_id in ds.ids[:n]:
        row = [(image_id, ds.load_image(image_id))]
        gt = ds.load_mask(image_id)
        if gt is not None:
            row.append(("GT", colorize(gt)))
        row.append((title, colorize(read_label_png(Path(pred) / f"{image_id}.png"))))
        rows.append(row)
    return panel_grid(rows, png)


def plot_loss(csv: str | Path, png: str | Path, columns: Sequence[str] | None = None, x: str = "step",
              title: str | None = None) -> Path:
    """Loss curves from a training CSV: ``columns`` (default: every column with 'loss' in its name)."""
    csv = Path(csv)
    if not csv.is_file():
        raise S2CError(f"loss log not found: {csv} (run the training stage first)")
    if not columns:
        with open(csv, newline="") as f:
            header = next(_csv.reader(f), [])
        columns = [c for c in header if "loss" in c]
    return plot_csv(csv, png, columns, x=x, title=title)


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c figures", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cams", help="CAM overlays for a few images")
    c.add_argument("--cams", type=Path, required=True)
    lab = sub.add_parser("labels", help="image | GT | label panels for a few images")
    lab.add_argument("--pred", type=Path, required=True)
    lab.add_argument("--title", default="label")
    for sp in (c, lab):
        sp.add_argument("--data-cfg", required=True)
        sp.add_argument("--split", required=True)
        sp.add_argument("--n", type=int, default=4, help="number of images (the split's first n)")
    b = sub.add_parser("bars", help="per-class IoU bar chart from a metrics JSON")
    b.add_argument("--metrics", type=Path, required=True)
    b.add_argument("--title", default=None)
    lo = sub.add_parser("loss", help="loss curves from a training CSV")
    lo.add_argument("--csv", type=Path, required=True)
    lo.add_argument("--columns", nargs="*", default=None)
    lo.add_argument("--x", default="step")
    for sp in (c, lab, b, lo):
        sp.add_argument("--out", type=Path, required=True, help="output PNG")
    a = p.parse_args(argv)
    if a.cmd == "cams":
        plot_cams(a.cams, parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.out, a.n)
    elif a.cmd == "labels":
        plot_labels(a.pred, parse_json_arg(a.data_cfg, "--data-cfg"), a.split, a.out, a.n, a.title)
    elif a.cmd == "bars":
        plot_iou_bars(a.metrics, a.out, a.title)
    else:
        plot_loss(a.csv, a.out, a.columns, a.x)
    return 0


if __name__ == "__main__":
    main()
