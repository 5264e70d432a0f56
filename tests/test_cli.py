"""The one JSON-argument parser (s2c.cli.parse_json_arg) and every stage using it: ``--data-cfg``
(and ``--cfg``) take JSON text, ``@file.json`` or a JSON file's path, the same for every stage."""

from __future__ import annotations

import importlib
import json
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
    ("eval_labels", "evaluate_labels", ["--pred", "p", "--split", "train", "--out", "o.json"]),
    ("gt_labels", "write_gt_labels", ["--split", "train", "--out", "o"]),
]


@pytest.mark.parametrize("stage,work,flags", STAGES, ids=[s for s, _, _ in STAGES])
def test_every_stage_reads_data_cfg_from_a_file(stage, work, flags, tmp_path, monkeypatch):
    mod = importlib.import_module(f"s2c.{stage}")
    seen = []
    monkeypatch.setattr(mod, work, lambda *a, **k: seen.append(a) or Path("o"))
    f = tmp_path / "data.json"
    f.write_text(json.dumps(DATA))
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{}")
    extra = ["--cfg", f"@{cfg}"] if stage not in ("eval_labels", "gt_labels") else []
    try:
        mod.main(["--data-cfg", f"@{f}", *flags, *extra])
    except (KeyError, TypeError):
        pass  # a stage printing fields of the (faked) result; the arguments were parsed by then
    assert seen and DATA in seen[0], seen
    with pytest.raises(SystemExit) as e:
        mod.main(["--data-cfg", f"@{tmp_path / 'missing.json'}", *flags])
    assert e.value.code == 2
