"""Print the run's headline table: CAM / pseudo-label / segmentation mIoU.

Usage: ``s2c summary results/<run>/metrics/{cam_train,pseudo_train,seg_val}.json``.
With ``--bench DIR...`` also prints each stage's wall time from Snakemake benchmark TSVs; with
``--tsv OUT`` writes the per-class IoU table (one column per metric file, mIoU last) that the
Snakemake report renders as a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

from ..errors import S2CError, cli_main
from ..io import atomic_path
from ..machine import describe

ROWS = {"cam_train": "CAM (train)", "pseudo_train": "pseudo-labels (train)", "seg_val": "segmentation (val)",
        "seg_gt_val": "seg on GT (val, ceiling)"}


def load_metric(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise S2CError(f"metrics file not found: {path}; run its stage first (snakemake {path})") from None
    except json.JSONDecodeError as e:
        raise S2CError(f"metrics file {path} is not valid JSON ({e}); delete it and rerun its stage") from None


def stage_times(bench_dir: Path) -> list[tuple[str, float]]:
    """(stage, seconds) from Snakemake `benchmark:` TSV files in ``bench_dir``."""
    out = []
    for tsv in sorted(bench_dir.glob("*.tsv")):
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            out.append((tsv.stem, float(rows[0]["s"])))
    return out


def format_table(metrics: dict[str, dict], times: list[tuple[str, float]] = (), machine: str | None = None) -> str:
    lines = [f"{'metric':<24} {'mIoU %':>8} {'floor %':>8}  {'extra'}", "-" * 64]
    for key, m in metrics.items():
        extra = [f"bg threshold {m['threshold']:.2f}"] if m.get("threshold") is not None else []
        # The floor column: the centre prior, a model-free predictor under the same threshold search.
        centre = (m.get("floors") or {}).get("centre_prior", {}).get("miou")
        floor = f"{centre:>8.2f}" if centre is not None else f"{'':>8}"
        if m.get("above_floor") is False:
            extra.append("BELOW a model-free floor")
        lines.append(f"{ROWS.get(key, key):<24} {m['miou']:>8.2f} {floor}  {'; '.join(extra)}")
    if machine:
        lines += ["", f"machine: {machine}"]
    if times:
        lines += ["", f"{'stage':<32} {'wall s':>8}", "-" * 41]
        lines += [f"{name:<32} {sec:>8.1f}" for name, sec in times]
    return "\n".join(lines)


def write_tsv(metrics: dict[str, dict], out: Path) -> None:
    """Per-class IoU (%) of each metric file side by side; empty cells for classes absent from GT."""
    names = list(next(iter(metrics.values()))["iou"])
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["class", *(ROWS.get(k, k) for k in metrics)])
        for c in names:
            w.writerow([c, *("" if m["iou"].get(c) is None else f"{m['iou'][c]:.2f}" for m in metrics.values())])
        w.writerow(["mIoU", *(f"{m['miou']:.2f}" for m in metrics.values())])
        for kind in ("centre_prior", "all_labelled"):
            vals = [(m.get("floors") or {}).get(kind, {}).get("miou") for m in metrics.values()]
            if any(v is not None for v in vals):
                w.writerow([f"floor: {kind}", *("" if v is None else f"{v:.2f}" for v in vals)])


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="s2c summary", description=__doc__)
    ap.add_argument("metrics", nargs="+", type=Path, help="metric JSON files (cam_train, pseudo_train, seg_val)")
    ap.add_argument("--bench", nargs="*", type=Path, default=[], help="folders of Snakemake benchmark TSVs")
    ap.add_argument("--tsv", type=Path, default=None, help="write the per-class IoU table here")
    args = ap.parse_args(argv)
    metrics = {p.stem: load_metric(p) for p in args.metrics}
    if args.tsv is not None:
        write_tsv(metrics, args.tsv)
    times = [t for d in args.bench if d.is_dir() for t in stage_times(d)]
    # the workflow's environment: the kernels its jobs get (the run's stages', unless they ran under
    # another cpu_kernels setting)
    print(format_table(metrics, times, describe(os.environ)))
    return 0


if __name__ == "__main__":
    main()
