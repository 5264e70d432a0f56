"""Have the ablation rows' losses flattened? One figure of every row's loss curves and a table.

Reads ``<run>/cam/losses.csv`` (written by ``s2c train_cam``: one line per optimizer step) of each
run folder given, e.g. every row of one seed of the coco-plus Table 1 (``--stage seg``:
``<run>/seg/losses.csv`` of the rows' seg nets, one line per ``seg.log_every`` steps), and

- draws one panel per loss term (L_CLS, L_SSC, L_CPM and the total), one line per run: a moving
  average over ``--window`` steps over the raw values drawn faintly;
- prints per run and loss: the mean over the first and the last quarter of the run's steps and the
  change from the third quarter to the fourth in percent of the third. A loss that still falls by
  several percent per quarter has not flattened: the row's schedule is too short to say what its
  loss does at convergence.

    .venv/bin/python bench/loss_curves.py results/coco_plus_cpu_s2c/ablations/*/seed0 \\
        --png bench/results/coco_plus_losses_seed0.png --out bench/results/coco_plus_losses_seed0.txt
    .venv/bin/python bench/loss_curves.py --stage seg --window 5 results/coco_plus_cpu_s2c/ablations/{baseline,s2c}/seed0
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from s2c.plots import plt, save_figure

TERMS = ("loss_cls", "loss_ssc", "loss_cpm", "loss")


def read_losses(run: Path, stage: str = "cam") -> dict[str, np.ndarray]:
    """The columns of ``run/<stage>/losses.csv`` as float arrays (empty cells → NaN)."""
    path = run / stage / "losses.csv"
    if not path.is_file():
        raise SystemExit(f"loss_curves: error: {path} not found (a run folder holds {stage}/losses.csv)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"loss_curves: error: {path} has no steps")
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])
            for k in rows[0]}


def trained(y: np.ndarray | None) -> bool:
    """Whether a loss column holds a term the run trains (a term switched off is logged as 0)."""
    return y is not None and bool(np.isfinite(y).any()) and bool(np.nanmax(np.abs(y)) > 0)


def run_name(run: Path) -> str:
    """``<row>/<seed>`` for an ablation run folder, else the folder's name."""
    return f"{run.parent.name}/{run.name}" if run.name.startswith("seed") else run.name


def quarters(y: np.ndarray) -> tuple[float, float, float]:
    """Mean of the first quarter, mean of the last, change from the third quarter to the fourth (%)."""
    q = np.array_split(y, 4)
    q3, q4 = np.nanmean(q[2]), np.nanmean(q[3])
    change = 100.0 * (q4 - q3) / abs(q3) if q3 else float("nan")
    return float(np.nanmean(q[0])), float(q4), float(change)


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (shorter at the start)."""
    c = np.cumsum(np.insert(np.nan_to_num(y), 0, 0.0))
    n = np.arange(1, len(y) + 1)
    lo = np.maximum(n - window, 0)
    return (c[n] - c[lo]) / (n - lo)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding <stage>/losses.csv")
    p.add_argument("--stage", default="cam",
                   help="the sub-folder holding losses.csv: cam (default), seg (a row's seg net), "
                        "seg_gt (with the run's results folder: the seg ceiling on GT)")
    p.add_argument("--png", type=Path, help="the figure (one panel per loss term)")
    p.add_argument("--out", type=Path, help="also write the table here")
    p.add_argument("--window", type=int, default=20, help="moving-average window in logged lines")
    a = p.parse_args()

    runs = [(run_name(r), read_losses(r, a.stage)) for r in a.runs]
    terms = [t for t in TERMS if any(trained(cols.get(t)) for _, cols in runs)]
    lines = ["run\tsteps\tloss\tfirst_quarter\tlast_quarter\tq3_to_q4_%"]
    for name, cols in runs:
        for t in terms:
            y = cols.get(t)
            if not trained(y):
                continue
            first, last, change = quarters(y)
            lines.append(f"{name}\t{int(cols['step'][-1])}\t{t}\t{first:.4f}\t{last:.4f}\t{change:+.1f}")
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(table + "\n")

    if a.png:
        fig, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.6), squeeze=False)
        axes = axes[0]
        colors = {name: f"C{i % 10}" for i, (name, _) in enumerate(runs)}  # one colour a run in every panel
        for ax, t in zip(axes, terms):
            for name, cols in runs:
                y = cols.get(t)
                if not trained(y):
                    continue
                x = cols["step"]
                ax.plot(x, moving_average(y, a.window), color=colors[name], label=name, linewidth=1.2)
                ax.plot(x, y, color=colors[name], alpha=0.15, linewidth=0.6)
            ax.set_title(t)
            ax.set_xlabel("step (of the run)")
            ax.grid(alpha=0.3)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=min(len(runs), 8),
                   fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.9))
        save_figure(fig, a.png)
        print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
