"""Report figures (matplotlib, Agg backend): CAM overlays, image | GT | label panels, per-class IoU
bars, loss curves. Snakemake rules list them as ``report()`` outputs.

CLI::

    python -m s2c.figures cams   --cams STORE --data-cfg JSON --split S --out PNG [--n 4]
    python -m s2c.figures labels --pred DIR  --data-cfg JSON --split S --out PNG [--n 4] [--title T]
    python -m s2c.figures bars   --metrics JSON --out PNG [--title T]
    python -m s2c.figures loss   --csv CSV --out PNG [--columns loss loss_cls ...] [--x step]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .classes import voc_palette  # noqa: E402
from .errors import S2CError, cli_main  # noqa: E402
from .io import atomic_path, read_label_png  # noqa: E402

_PALETTE = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(label: np.ndarray) -> np.ndarray:
    """uint8 (H, W) label map → uint8 (H, W, 3) RGB with the VOC palette."""
    return _PALETTE[np.asarray(label, dtype=np.uint8)]


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Jet heat map of cam float (H, W) in [0, 1] blended over image uint8 (H, W, 3) → uint8 (H, W, 3)."""
    heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return (255 * ((1 - alpha) * image / 255.0 + alpha * heat)).clip(0, 255).astype(np.uint8)


def _save(fig, png: str | Path) -> Path:
    png = Path(png)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png


def _grid(rows: list[list[tuple[str, np.ndarray]]], png: str | Path) -> Path:
    """Save a grid of titled RGB panels (rows of (title, uint8 (H, W, 3)))."""
    if not rows:
        raise S2CError(f"no images to draw into {png}; the split is empty")
    ncol = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.6 * ncol, 2.4 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax in ax_row:
            ax.axis("off")
        for ax, (title, img) in zip(ax_row, row):
            ax.imshow(img)
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, png)


def plot_cams(cams: str | Path, data_cfg: dict, split: str, png: str | Path, n: int = 4,
              max_classes: int = 3) -> Path:
    """For the first ``n`` images: the image, then a jet overlay of each labelled class's CAM."""
    from .data import open_dataset
    from .infer_cam import CAMStore

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
    return _grid(rows, png)


def plot_labels(pred: str | Path, data_cfg: dict, split: str, png: str | Path, n: int = 4,
                title: str = "label") -> Path:
    """For the first ``n`` images: image | GT (when available) | ``pred/<id>.png``."""
    from .data import open_dataset

    ds = open_dataset(data_cfg, split)
    rows = []
    for image_id in ds.ids[:n]:
        row = [(image_id, ds.load_image(image_id))]
        gt = ds.load_mask(image_id)
        if gt is not None:
            row.append(("GT", colorize(gt)))
        row.append((title, colorize(read_label_png(Path(pred) / f"{image_id}.png"))))
        rows.append(row)
    return _grid(rows, png)


def plot_iou_bars(metrics: dict | str | Path, png: str | Path, title: str | None = None) -> Path:
    """Horizontal bar chart of the per-class IoU (percent) of a metrics dict/JSON, mIoU as a line."""
    from .metrics import read_metrics

    if not isinstance(metrics, dict):
        metrics = read_metrics(metrics)
    if "iou" not in metrics:
        raise S2CError("metrics have no 'iou' entry; pass a JSON written by eval_cam / eval_labels")
    names = list(metrics["iou"])
    vals = [np.nan if v is None else v for v in metrics["iou"].values()]
    fig, ax = plt.subplots(figsize=(6, 0.22 * len(names) + 1.2))
    ax.barh(names, vals, color=_PALETTE[: len(names)] / 255.0, edgecolor="k", linewidth=0.3)
    if metrics.get("miou") is not None:
        ax.axvline(metrics["miou"], color="k", linestyle="--", linewidth=1,
                   label=f"mIoU {metrics['miou']:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.tick_params(axis="y", labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, png)


def plot_loss(csv: str | Path, png: str | Path, columns: Sequence[str] | None = None, x: str = "step",
              title: str | None = None) -> Path:
    """Loss curves from a training CSV: ``columns`` (default: every column with 'loss' in its name)."""
    import csv as _csv

    from .train_utils import plot_csv

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
    from .infer_cam import parse_json_arg

    p = argparse.ArgumentParser(prog="python -m s2c.figures", description=__doc__.split("\n")[0])
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
