"""Plotting helpers (matplotlib, Agg backend) shared by the stages: per-class IoU bars, curves from a
CSV log, label-map colours, CAM overlays and panel grids. Every PNG is written atomically.
"""

from __future__ import annotations

import csv
import os
import textwrap
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .classes import voc_palette  # noqa: E402
from .errors import S2CError  # noqa: E402
from .io import atomic_path  # noqa: E402
from .metrics import read_metrics  # noqa: E402

_PALETTE = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(label: np.ndarray) -> np.ndarray:
    """uint8 (H, W) label map → uint8 (H, W, 3) RGB with the VOC palette."""
    return _PALETTE[np.asarray(label, dtype=np.uint8)]


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Jet heat map of cam float (H, W) in [0, 1] blended over image uint8 (H, W, 3) → uint8 (H, W, 3)."""
    heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return (255 * ((1 - alpha) * image / 255.0 + alpha * heat)).clip(0, 255).astype(np.uint8)


def save_figure(fig, png: str | Path) -> Path:
    png = Path(png)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png


def panel_grid(rows: list[list[tuple[str, np.ndarray]]], png: str | Path) -> Path:
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
    return save_figure(fig, png)


def plot_iou_bars(metrics: dict | str | Path, png: str | Path, title: str | None = None) -> Path:
    """Horizontal bar chart of the per-class IoU (percent) of a metrics dict/JSON, mIoU as a line."""
    if not isinstance(metrics, dict):
        metrics = read_metrics(metrics)
    if "iou" not in metrics:
        raise S2CError("metrics have no 'iou' entry; pass a JSON written by eval_cam / eval_pseudo")
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
    return save_figure(fig, png)


def note_figure(png: str | Path, title: str, text: str) -> Path:
    """A figure that says why a plot is absent (a report entry that always exists), atomic write."""
    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, textwrap.fill(text, 90), ha="center", va="center", wrap=True)
    return save_figure(fig, png)


def plot_csv(csv_path: str | os.PathLike, png_path: str | os.PathLike, columns: Iterable[str],
             x: str = "step", title: str | None = None) -> Path:
    """Plot ``columns`` of a CSV against ``x`` (row index when absent) into a PNG (atomic write)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))

    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows])

    xs = col(x) if rows and x in rows[0] else np.arange(len(rows), dtype=float)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c in columns:
        if rows and c in rows[0]:
            ys = col(c)
            if np.isfinite(ys).any():
                ax.plot(xs, ys, label=c, linewidth=1)
    ax.set_xlabel(x)
    ax.set_ylabel("value")
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, png_path)
