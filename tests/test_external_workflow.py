"""External CAM / pseudo-label sources, the Table 5 target and the submission target in the DAG
(dry runs of the demo config in an empty working directory), and the table5 stage."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from s2c.cam_import import CAM_FORMATS
from s2c.sections import REFINEMENTS
from s2c.stages.table5 import main as table5_main

REPO = Path(__file__).resolve().parents[1]


def dry_run(tmp_path, *targets, config=(), check=True):
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "work"),
                          "-n", "--cores", "2", *targets, "--configfile", str(REPO / "config/config.yaml"),
                          "--config", *config],
                         capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    if check and out.returncode != 0:
        raise AssertionError(text)
    return dict(re.findall(r"^(\w+)\s+(\d+)$", text.split("Job stats:")[-1], re.M)), text


def test_external_cams_schedule_no_cam_training_and_table5_rows(tmp_path):
    ext = tmp_path / "irn"
    ext.mkdir()
    jobs, text = dry_run(tmp_path, "eval_voc", "table5", config=[
        f"external={{cams: {ext}, format: irn}}",
        f"table5={{sources: {{other: {{cams: {ext}, format: clip_es}}}}, seg: true}}"])
    assert "train_cam" not in jobs and "infer_cam" not in jobs and "ablation_train_cam" not in jobs, jobs
    assert jobs["import_run_cams"] == "1" and jobs["import_cams"] == "1"
    # two sources × three refinements, a seg net each
    assert jobs["table5_pseudo_labels"] == "6" and jobs["table5_eval_pseudo"] == "6" and jobs["table5_train_seg"] == "2"
    assert f"--source {ext}" in text and "--format irn" in text and "--format clip_es" in text
    assert "'{\"refine\": \"crf\"" in text or '"refine": "crf"' in text


def test_external_pseudo_labels_skip_to_train_seg(tmp_path):
    ext = tmp_path / "labels"
    ext.mkdir()
    jobs, _ = dry_run(tmp_path, "eval_voc", config=[f"external={{pseudo: {ext}}}"])
    assert jobs.get("import_pseudo") == "1"
    for rule in ("train_cam", "infer_cam", "eval_cam", "pseudo_labels", "figure_cams"):
        assert rule not in jobs, (rule, jobs)
    assert jobs["train_seg"] == "1" and jobs["eval_seg"] == "1"


def test_own_cams_stay_the_default_and_submission(tmp_path):
    jobs, text = dry_run(tmp_path, "table5", "submission",
                         config=["table5={refine: [none, sam]}", "splits={test: val}"])
    assert jobs["train_cam"] == "1" and "import_cams" not in jobs and jobs["table5_pseudo_labels"] == "2"
    assert jobs["eval_seg_test"] == "1" and "--submission" in text and "submission/voc_val.tar.gz" in text


def test_bad_external_folder_is_one_config_error(tmp_path):
    _, text = dry_run(tmp_path, "eval_voc", config=[f"external={{cams: {tmp_path / 'nope'}}}"], check=False)
    assert "config error: external.cams" in text and "is not a folder" in text


def test_schema_enums_match_the_library():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["properties"]
    assert schema["external"]["properties"]["format"]["enum"] == list(CAM_FORMATS)
    t5 = schema["table5"]["properties"]
    assert t5["refine"]["items"]["enum"] == list(REFINEMENTS)
    assert t5["sources"]["additionalProperties"]["properties"]["format"]["enum"] == list(CAM_FORMATS)


def _metrics(path, miou, **extra):
    path.write_text(json.dumps({"miou": miou, **extra}))
    return str(path)


def test_table5_stage(tmp_path, capsys):
    rows = {
        "main": {"source": "s2c", "cam": _metrics(tmp_path / "c.json", 50.0, threshold=0.3),
                 "pseudo": {r: _metrics(tmp_path / f"p_{r}.json", v) for r, v in
                            (("none", 55.0), ("crf", 57.5), ("sam", 60.25))}, "seg": None, "paper": {}},
        "irn": {"source": "irn:x", "cam": _metrics(tmp_path / "c2.json", 48.0, threshold=0.16),
                "pseudo": {"none": _metrics(tmp_path / "q.json", 66.0), "sam": _metrics(tmp_path / "q2.json", 70.0)},
                "seg": None, "paper": {"pseudo": 66.5, "pseudo_sam": 71.0}},
    }
    out = tmp_path / "t5.tsv"
    assert table5_main(["--rows", json.dumps(rows), "--out", str(out)]) == 0
    lines = [ln.split("\t") for ln in out.read_text().splitlines()]
    head = lines[0]
    assert head[:7] == ["source", "cams", "cam_miou", "threshold", "pseudo_none", "pseudo_crf", "pseudo_sam"]
    main_row = dict(zip(head, lines[1]))
    irn = dict(zip(head, lines[2]))
    assert main_row["sam_gain"] == "+5.25" and main_row["paper_pseudo"] == ""
    assert irn["pseudo_crf"] == "" and irn["sam_gain"] == "+4.00" and irn["paper_pseudo_sam"] == "71.00"
    assert "irn:x" in capsys.readouterr().out


def test_table5_missing_metrics_is_one_line(tmp_path, capsys):
    rows = {"main": {"cam": str(tmp_path / "missing.json"), "pseudo": {}}}
    with pytest.raises(SystemExit):
        table5_main(["--rows", json.dumps(rows), "--out", str(tmp_path / "t.tsv")])
    err = capsys.readouterr().err.strip()
    assert err.startswith("s2c: error: metrics file not found") and len(err.splitlines()) == 1
