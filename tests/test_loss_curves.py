"""bench/loss_curves.py: the quarter table is computed from the CSVs, the figure is written, a folder
without cam/losses.csv is refused with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "loss_curves.py"


def write_run(folder: Path, cls: list[float], cpm: list[float] | None = None) -> Path:
    (folder / "cam").mkdir(parents=True)
    lines = ["step,epoch,lr,loss,loss_cls,loss_ssc,loss_cpm,step_time"]
    for i, c in enumerate(cls):
        p = cpm[i] if cpm else 0.0
        lines.append(f"{i + 1},1,0.01,{c + p},{c},-0.0,{p},1.0")
    (folder / "cam" / "losses.csv").write_text("\n".join(lines) + "\n")
    return folder


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True)


def test_quarters_and_figure(tmp_path):
    falling = write_run(tmp_path / "baseline" / "seed0", [8.0] * 4 + [4.0] * 4 + [2.0] * 4 + [1.0] * 4)
    flat = write_run(tmp_path / "cpm_only" / "seed0", [1.0] * 16, cpm=[2.5] * 16)
    png, out = tmp_path / "curves.png", tmp_path / "table.txt"
    r = run(str(falling), str(flat), "--png", str(png), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = {tuple(line.split("\t")[:3]): line.split("\t")[3:] for line in out.read_text().splitlines()[1:]}
    assert rows[("baseline/seed0", "16", "loss_cls")] == ["8.0000", "1.0000", "-50.0"]
    assert rows[("cpm_only/seed0", "16", "loss_cpm")] == ["2.5000", "2.5000", "+0.0"]
    # terms a row does not train (all zero: L_SSC everywhere, L_CPM in the baseline) are left out
    assert ("baseline/seed0", "16", "loss_cpm") not in rows
    assert not any(k[2] == "loss_ssc" for k in rows)
    assert png.stat().st_size > 0


def test_missing_losses_file(tmp_path):
    r = run(str(tmp_path / "nothing"))
    assert r.returncode != 0
    assert "cam/losses.csv" in r.stderr and r.stderr.count("\n") == 1


def test_seg_stage(tmp_path):
    """--stage seg reads <run>/seg/losses.csv (one line per seg.log_every steps): its one loss, the
    step column's last value as the run's steps, one panel."""
    run_dir = tmp_path / "s2c" / "seed0"
    (run_dir / "seg").mkdir(parents=True)
    lines = ["step,epoch,loss,lr"] + [f"{10 * (i + 1)},1,{v},0.001" for i, v in enumerate([4.0, 4.0, 2.0, 1.0])]
    (run_dir / "seg" / "losses.csv").write_text("\n".join(lines) + "\n")
    png, out = tmp_path / "seg.png", tmp_path / "seg.txt"
    r = run("--stage", "seg", str(run_dir), "--png", str(png), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text().splitlines()[1].split("\t") == ["s2c/seed0", "40", "loss", "4.0000", "1.0000", "-50.0"]
    assert png.stat().st_size > 0
    r = run("--stage", "seg", str(tmp_path / "nothing"))
    assert r.returncode != 0 and "seg/losses.csv" in r.stderr
