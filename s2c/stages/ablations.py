"""The paper's ablation tables from a set of runs.

One line per (row, seed): the CAM mIoU of that run's classifier, its model-free floor (centre
prior), optionally its pseudo-label and segmentation mIoU, the number of optimizer steps it trained
from the ImageNet weights (``steps``; with a shared warm-up, ``warmup_steps`` of them are the warm-up's;
``probe_steps``: head-only steps on frozen features the warm-up started from, not in ``steps``),
and the paper's VOC number for the row (Tables 1 / 2) beside ours. Written as a TSV (the Snakemake
report renders it) and printed as a table.

Usage::

    s2c ablations --runs results/x/ablations/baseline/seed0 ... --out ablations.tsv \\
        [--command "snakemake ablations ..."] [--merge ablations.tsv]

``--merge`` keeps the lines of an earlier table whose (row, seed) none of ``--runs`` provides, each
with its own commit and command, so that one table can gather runs made on several machines or
in several sessions whose run folders are not all at hand.

Each run folder holds ``metrics/cam_train.json`` (eval_cam), ``cam/losses.csv`` (train_cam) and,
when evaluated, ``metrics/pseudo_train.json`` / ``metrics/seg_val.json``. A folder's last two path
parts are ``<row>/seed<N>``.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import subprocess
from pathlib import Path

from ..errors import S2CError, cli_main
from ..io import atomic_path
from ..metrics import read_metrics
from ..models import read_cam_checkpoint
from ..sections import ABLATIONS, PAPER_VOC_CAM, WARMUP_ROW

COLUMNS = ("row", "seed", "steps", "warmup_steps", "probe_steps", "cam_miou", "floor_miou", "pseudo_miou", "seg_miou", "paper_voc_cam",
           "commit", "command")


def git_commit(cwd: str | Path = ".") -> str:
    """Short commit of the working tree (``+dirty`` with uncommitted changes); "" outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return rev + ("+dirty" if dirty else "")


def _steps(losses_csv: Path) -> int | None:
    if not losses_csv.is_file():
        return None
    with open(losses_csv, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def _starts(model_pt: Path) -> tuple[int | None, int | None]:
    """(warm-up steps, probe head steps) behind a run, along its chain of cam.init model.pt files
    (row → warm-up → probe_cam); None for a phase it did not start from."""
    warm = probe = None
    ckpt = read_cam_checkpoint(model_pt) if model_pt.is_file() else None
    for _ in range(3):
        init = (ckpt["cam_cfg"] or {}).get("init") if ckpt else None
        if not init:
            break
        ckpt = read_cam_checkpoint(init) if Path(init).is_file() else None
        if ckpt is not None and "probe" in ckpt:
            probe = int(ckpt["probe"]["steps"])
            break
        warm = _steps(Path(init).parent / "losses.csv")
    return warm, probe


def run_row(run: Path, commit: str, command: str) -> dict:
    """The table line of one run folder ``.../<row>/seed<N>``."""
    m = re.fullmatch(r"seed(\d+)", run.name)
    row = run.parent.name
    if m is None or row not in (*ABLATIONS, WARMUP_ROW):
        raise S2CError(f"{run}: expected a folder <row>/seed<N> with <row> one of {sorted(ABLATIONS)} or "
                       f"{WARMUP_ROW!r}")
    cam = read_metrics(run / "metrics" / "cam_train.json")
    opt = {k: (read_metrics(p)["miou"] if (p := run / "metrics" / f"{k}.json").is_file() else None)
           for k in ("pseudo_train", "seg_val")}
    own = _steps(run / "cam" / "losses.csv")
    warm, probe = _starts(run / "cam" / "model.pt")
    return {"row": row, "seed": int(m.group(1)), "steps": None if own is None else own + (warm or 0),
            "warmup_steps": warm, "probe_steps": probe,
            "cam_miou": cam["miou"], "floor_miou": (cam.get("floors") or {}).get("centre_prior", {}).get("miou"),
            "pseudo_miou": opt["pseudo_train"], "seg_miou": opt["seg_val"],
            "paper_voc_cam": PAPER_VOC_CAM.get(row), "commit": commit, "command": command}


TYPES = {"seed": int, "steps": int, "warmup_steps": int, "probe_steps": int, "cam_miou": float, "floor_miou": float,
         "pseudo_miou": float, "seg_miou": float, "paper_voc_cam": float}


def read_table(path: str | Path) -> list[dict]:
    """The lines of a table :func:`write_table` wrote, typed back (an empty cell is None)."""
    path = Path(path)
    if not path.is_file():
        raise S2CError(f"{path}: no such table to merge; drop --merge to start a new one")
    with open(path, newline="") as f:
        r = csv.DictReader(f, delimiter="\t")
        if tuple(r.fieldnames or ()) != COLUMNS:
            raise S2CError(f"{path}: not an ablation table (columns {r.fieldnames}, expected {list(COLUMNS)}); "
                           "drop --merge to start a new one")
        return [{c: None if v == "" else TYPES.get(c, str)(v) for c, v in line.items()} for line in r]


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``new`` replaces the lines of ``old`` with the same (row, seed); the other lines of ``old`` stay
    as they are. Ordered by seed, then by the rows' first appearance (``old``'s order first)."""
    fresh = {(r["row"], r["seed"]) for r in new}
    order = {row: i for i, row in enumerate(dict.fromkeys(r["row"] for r in (*old, *new)))}
    rows = [r for r in old if (r["row"], r["seed"]) not in fresh] + new
    return sorted(rows, key=lambda r: (r["seed"], order[r["row"]]))


def write_table(rows: list[dict], out: str | Path) -> None:
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if r[c] is None else r[c] for c in COLUMNS])


def format_table(rows: list[dict]) -> str:
    """Per-row lines, then :func:`paired_differences` against the baseline."""
    head = f"{'row':<16} {'seed':>4} {'steps':>6} {'CAM':>7} {'floor':>7} {'pseudo':>7} {'seg':>7} {'paper VOC':>9}"
    lines = [head, "-" * len(head)]
    fmt = lambda v: f"{v:7.2f}" if isinstance(v, (int, float)) else f"{'':>7}"  # noqa: E731
    for r in rows:
        lines.append(f"{r['row']:<16} {r['seed']:>4} {r['steps'] if r['steps'] is not None else '':>6} "
                     f"{fmt(r['cam_miou'])} {fmt(r['floor_miou'])} {fmt(r['pseudo_miou'])} {fmt(r['seg_miou'])} "
                     f"{'' if r['paper_voc_cam'] is None else r['paper_voc_cam']:>9}")
    return "\n".join(lines + ["", paired_differences(rows)])


def paired_differences(rows: list[dict], metrics=("cam_miou", "pseudo_miou", "seg_miou")) -> str:
    """Each row against the baseline of the same seed: the per-seed differences of every metric
    both runs have, then their mean ± sample sd over the seeds (sd only with 2+ seeds)."""
    by = {(r["row"], r["seed"]): r for r in rows}
    head = f"{'row − baseline':<16} {'metric':<7} {'per seed':<36} {'mean':>7} {'± sd':>6} {'n':>2}"
    lines = [head, "-" * len(head)]
    for row in dict.fromkeys(r["row"] for r in rows):
        if row in ("baseline", WARMUP_ROW):
            continue
        for m in metrics:
            d = {s: by[(row, s)][m] - by[("baseline", s)][m] for (rw, s) in by
                 if rw == row and ("baseline", s) in by and by[(row, s)][m] is not None
                 and by[("baseline", s)][m] is not None}
            if not d:
                continue
            v = list(d.values())
            sd = statistics.stdev(v) if len(v) > 1 else None
            per = " ".join(f"s{s}:{x:+.2f}" for s, x in sorted(d.items()))
            lines.append(f"{row:<16} {m.split('_')[0]:<7} {per:<36} {statistics.fmean(v):+7.2f} "
                         f"{'' if sd is None else f'{sd:6.2f}':>6} {len(v):>2}")
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c ablations", description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="run folders <row>/seed<N>")
    p.add_argument("--out", type=Path, required=True, help="output TSV")
    p.add_argument("--command", default="", help="the command that made the runs (recorded per line)")
    p.add_argument("--merge", type=Path, help="an earlier table: its lines for (row, seed) not in --runs are kept")
    a = p.parse_args(argv)
    if not a.runs and a.merge is None:
        p.error("give --runs, --merge or both")
    commit = git_commit()
    rows = [run_row(r, commit, a.command) for r in a.runs]
    if a.merge is not None:
        rows = merge_rows(read_table(a.merge), rows)
    write_table(rows, a.out)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
