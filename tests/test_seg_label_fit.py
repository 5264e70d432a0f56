"""bench/seg_label_fit.py: one stopped seg run per (label set, seed), a table of per-epoch mean losses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {"backbone": "efficientnet_lite0", "pretrained": False, "epochs": 3, "batch_size": 4, "crop_size": 64,
        "num_workers": 0, "log_every": 1}


def test_table_of_stopped_runs(synthetic_gt_labels, tmp_path):
    data_cfg, labels = synthetic_gt_labels
    out = tmp_path / "table.txt"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "seg_label_fit.py"), "--data-cfg", json.dumps(data_cfg),
                        "--cfg", json.dumps(TINY), "--labels", f"gt={labels}", "--seeds", "0", "1",
                        "--stop-epoch", "1", "--work", str(tmp_path / "work"), "--out", str(out)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert lines[0] == ["labels", "seg_seed", "epoch1"]
    assert [x[:2] for x in lines[1:]] == [["gt", "0"], ["gt", "1"]]
    assert all(float(v) > 0 for x in lines[1:] for v in x[2:])
    assert lines[1][2:] != lines[2][2:]  # the seed reaches the run
    # stopped after epoch 1 of 3: checkpoint kept, no final model
    assert not (tmp_path / "work" / "gt_seed0" / "model.pt").exists()
