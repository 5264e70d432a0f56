"""The one JSON-argument parser (s2c.cli.parse_json_arg) and every stage using it: ``--data-cfg``
(and ``--cfg``) take JSON text, ``@file.json`` or a JSON file's path, the same for every stage."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from s2c.cli import parse_json_arg
from s2c.errors import S2CError

DATA = {"kind": "voc", "root": "data/x"}


def test_parse_json_arg_forms(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps(DATA))
    assert parse_json_arg(json.dumps(DATA), "--data-cfg") == DATA
    assert parse_json_arg(f"@{f}", "--data-cfg") == DATA
    assert parse_json_arg(str(f), "--data-cfg") == DATA
    for bad, msg in (("{nope", "not valid JSON"), (f"@{tmp_path / 'missing.json'}", "not valid JSON"),
                     ("[1, 2]", "expected a JSON object"), (str(tmp_path / "missing.json"), "not valid JSON")):
        with pytest.raises(S2CError, match=rf"^--data-cfg: {msg}"):
            parse_json_arg(bad, "--data-cfg")


# stage module, its work function (replaced: only the parsing is tested), the flags besides the JSON ones
STAGES = [
    ("sam_embed", "run_sam_embed", ["--split", "train", "--out", "o"]),
    ("sam_everything", "run_sam_everything", ["--split", "train", "--out", "o"]),
    ("train_cam", "train_cam", ["--split", "train", "--out", "o"]),
    ("infer_cam", "infer_cams", ["--model", "m.pt", "--split", "train", "--out", "o.h5"]),
    ("eval_cam", "evaluate_cams", ["--cams", "c.h5", "--split", "train", "--out", "o.json"]),
    ("pseudo_labels", "make_pseudo_labels", ["--cams", "c.h5", "--split", "train", "--out", "o"]),
    ("train_seg", "train_seg", ["--split", "train", "--labels", "l", "--out", "o"]),
    ("eval_seg", "eval_seg", ["--model", "m.pt", "--split", "val", "--out-json", "o.json"]),
    ("eval_pseudo", "evaluate_labels", ["--pred", "p", "--split", "train", "--out", "o.json"]),
    ("gt_labels", "write_gt_labels", ["--split", "train", "--out", "o"]),
]


@pytest.mark.parametrize("stage,work,flags", STAGES, ids=[s for s, _, _ in STAGES])
def test_every_stage_reads_data_cfg_from_a_file(stage, work, flags, tmp_path, monkeypatch):
    mod = importlib.import_module(f"s2c.stages.{stage}")
    seen = []
    monkeypatch.setattr(mod, work, lambda *a, **k: seen.append(a) or Path("o"))
    f = tmp_path / "data.json"
    f.write_text(json.dumps(DATA))
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{}")
    extra = ["--cfg", f"@{cfg}"] if stage not in ("eval_pseudo", "gt_labels") else []
    try:
        mod.main(["--data-cfg", f"@{f}", *flags, *extra])
    except (KeyError, TypeError):
        pass  # a stage printing fields of the (faked) result; the arguments were parsed by then
    assert seen and DATA in seen[0], seen
    with pytest.raises(SystemExit) as e:
        mod.main(["--data-cfg", f"@{tmp_path / 'missing.json'}", *flags])
    assert e.value.code == 2


def test_console_command_lists_and_runs_every_stage():
    """`s2c --help` names every module of s2c.stages; `python -m s2c STAGE` reaches the stage."""
    import subprocess
    import sys

    from s2c import stages

    names = stages.stage_names()
    assert {"train_cam", "sam_embed", "eval_pseudo", "summary"} <= set(names)
    out = subprocess.run([sys.executable, "-m", "s2c", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert listed == names
    assert all(stages.first_line(n) for n in names), "every stage module needs a docstring"
    out = subprocess.run([sys.executable, "-m", "s2c", "eval_cam", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "usage: s2c eval_cam" in out.stdout
    out = subprocess.run([sys.executable, "-m", "s2c", "no_such_stage"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no stage 'no_such_stage'" in out.stderr


def test_gpu_slot_option_pins_before_the_stage(tmp_path, monkeypatch):
    from s2c import stages

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: x)'\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    monkeypatch.setenv("S2C_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    seen = {}
    monkeypatch.setattr("s2c.stages.summary.main", lambda argv: seen.update(
        argv=argv, cuda=os.environ.get("CUDA_VISIBLE_DEVICES")) or 0)
    assert stages.main(["--gpu-slot", "summary", "a.json"]) == 0
    assert seen == {"argv": ["a.json"], "cuda": "0"}


def test_every_rule_runs_an_existing_stage():
    """The rules' shell commands name stages that exist (a renamed module breaks here, not in a run)."""
    import re

    from s2c import stages

    root = Path(__file__).resolve().parents[1]
    used = set()
    files = [*(root / "workflow" / "rules").glob("*.smk"), root / "workflow" / "Snakefile", root / "Snakefile"]
    for smk in files:
        used |= set(re.findall(r'^\s*"\s*(?:&& )?s2c (?:--gpu-slot )?([a-z_0-9]+)', smk.read_text(), flags=re.M))
    assert used and used <= set(stages.stage_names()), used - set(stages.stage_names())
    assert not [p for p in files if "python -m s2c." in p.read_text()]
