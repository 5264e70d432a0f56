"""Workflow catalog conventions: the files the Snakemake workflow catalog expects, the `.test`
configuration run with ``--directory .test``, the default target, the per-dataset target names,
the dataset layout check (s2c.stages.prepare, prepare_voc / prepare_coco), and environment.yml ==
pyproject.toml dependencies."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from _dot_test import REPO, RUN, dot_test_copy, finished_dot_test, smk
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from s2c.stages.prepare import check_layout


# --- catalog files ---------------------------------------------------------------------------
def test_license_is_the_mit_license_pyproject_names():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["license"]["text"] == "MIT"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


def test_workflow_catalog_metadata():
    meta = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = meta["usage"]
    assert usage["mandatory-flags"]["desc"] and usage["mandatory-flags"]["flags"]
    assert set(usage["software-stack-deployment"]) == {"conda", "apptainer", "apptainer+conda"}
    assert usage["report"] is True


def test_config_readme_documents_every_config_file_and_section():
    readme = (REPO / "config" / "README.md").read_text()
    for f in sorted((REPO / "config").glob("*.yaml")):
        assert f"`{f.name}`" in readme, f"config/README.md does not describe {f.name}"
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    for section in schema["properties"]:
        assert re.search(rf"^\| `{section}` \|", readme, flags=re.M), f"config/README.md: no row for `{section}`"
    for needle in ("SegmentationClassAug", "train_aug.txt", "instances_train", "sam_vit_h_4b8939.pth",
                   "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"):
        assert needle in readme, needle


def test_profiles_readme_documents_every_profile():
    readme = (REPO / "profiles" / "README.md").read_text()
    profiles = [p.name for p in (REPO / "profiles").iterdir() if p.is_dir()]
    assert {"default", "slurm"} <= set(profiles)
    for name in profiles:
        assert f"`{name}/`" in readme, name


# --- environment.yml == pyproject.toml --------------------------------------------------------
CONDA_TO_PYPI = {"pytorch": "torch", "opencv": "opencv-python-headless"}
CONDA_ONLY = {"python", "pip", "pytorch-cuda"}  # the interpreter, the installer, the CUDA runtime


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_yml_requirements() -> dict[str, SpecifierSet]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            name, rest = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", spec).groups()
            if name in CONDA_ONLY:
                continue
            # conda's `pkg=1.2` is `pkg==1.2.*`; every pin here uses >= / < which both tools share
            out[_norm(CONDA_TO_PYPI.get(name, name))] = SpecifierSet(rest.replace(" ", ""))
    return out


def _pyproject_requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    out: dict[str, SpecifierSet] = {}
    for r in map(Requirement, reqs):
        prev = out.setdefault(_norm(r.name), r.specifier)
        assert prev == r.specifier, f"pyproject.toml pins {r.name} twice differently: {prev} / {r.specifier}"
    return out


def test_environment_yml_and_pyproject_list_the_same_dependencies():
    env, py = _env_yml_requirements(), _pyproject_requirements()
    assert sorted(set(py) - set(env)) == [], "in pyproject.toml, missing from environment.yml"
    assert sorted(set(env) - set(py)) == [], "in environment.yml, missing from pyproject.toml"
    differ = {n: (str(py[n]), str(env[n])) for n in py if py[n] != env[n]}
    assert not differ, f"version specifiers differ (pyproject, environment.yml): {differ}"


# --- the dataset layout check ----------------------------------------------------------------
def _voc_cfg(root) -> dict:
    return {"kind": "voc", "root": str(root), "class_set": "voc20", "gt_dir": None}


def test_prepare_accepts_a_complete_voc_layout(synthetic_voc):
    report = check_layout(_voc_cfg(synthetic_voc), ["train_aug"], ["train", "val"])
    assert report["ok"], report["problems"]
    assert report["splits"]["val"]["label_maps"] == report["splits"]["val"]["images"] == 4


def _prepare_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2c.stages.prepare", *args], capture_output=True, text=True,
                          timeout=120)


def test_prepare_names_everything_missing_from_a_voc_folder(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n2007_000042\n")
    (root / "JPEGImages/2007_000033.jpg").write_bytes(b"x")  # present (a 0-byte file counts as missing)
    out = _prepare_cli("--data-cfg", json.dumps(_voc_cfg(root)), "--train", "train_aug", "--eval", "val",
                       "--sam-model-type", "vit_h", "--sam-checkpoint", str(tmp_path / "sam_vit_h_4b8939.pth"))
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr
    # each missing piece, where it was looked for, and where to get it
    assert "image list for split 'train_aug'" in err and "train_aug.txt" in err and "irn" in err
    assert "SegmentationClass" in err and "SBD" in err
    assert "1 of 2 images of split 'val': 2007_000042" in err and str(root / "JPEGImages") in err
    assert "SAM vit_h checkpoint" in err and "dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in err
    assert "4 problem(s)" in err, err


def test_prepare_names_missing_coco_files(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    (root / "annotations/instances_train.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "000000000001.jpg", "height": 4, "width": 4}], "annotations": [],
         "categories": []}))
    cfg = {"kind": "coco", "root": str(root), "class_set": "voc20"}
    out = _prepare_cli("--data-cfg", json.dumps(cfg), "--train", "train", "--eval", "val")
    assert out.returncode == 2
    assert "image folder of split 'val'" in out.stderr and "instances json of split 'val'" in out.stderr
    assert "1 of 1 images of split 'train': 000000000001.jpg" in out.stderr
    assert "cocodataset.org" in out.stderr
    # the quick check (the one Snakemake runs when it builds the DAG) names the same problems
    quick = check_layout({**cfg, "cache_dir": str(tmp_path / "cache")}, ["train"], ["val"], quick=True)
    assert sorted(p["what"] for p in quick["problems"]) == [
        "1 of 1 images of split 'train': 000000000001.jpg", "image folder of split 'val'",
        "instances json of split 'val'"]


def test_a_broken_dataset_stops_snakemake_before_any_job(tmp_path):
    cfg = yaml.safe_load((REPO / "config/voc.yaml").read_text())
    root = tmp_path / "VOC2012"
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    for s in ("train_aug", "train", "val"):
        (root / f"ImageSets/Segmentation/{s}.txt").write_text("a\n")
    cfg["data"]["root"] = str(root)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = smk(tmp_path / "work", "-n", "--cores", "1", "--configfile", str(tmp_path / "cfg.yaml"), check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "dataset check" in text and "JPEGImages" in text and "sam_vit_h_4b8939.pth" in text, text[-3000:]
    assert "ilsvrc-cls_rna-a1_cls1000_ep-0001.params" in text


# --- targets ---------------------------------------------------------------------------------
def test_eval_coco_refuses_a_voc_config(tmp_path):
    work = dot_test_copy(tmp_path / "w")
    out = smk(work, "-n", "--cores", "1", "eval_coco", check=False)
    assert out.returncode != 0
    assert "eval_coco evaluates a COCO config, but this config has data.kind: voc" in out.stdout + out.stderr


def test_eval_voc_refuses_a_coco_config(tmp_path):
    root = tmp_path / "coco"
    for d in ("annotations", "train", "val"):
        (root / d).mkdir(parents=True)
    for s in ("train", "val"):  # a split the DAG-time check accepts: one image entry, its file present
        (root / f"annotations/instances_{s}.json").write_text(json.dumps(
            {"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}], "annotations": [], "categories": []}))
        (root / s / "a.jpg").write_bytes(b"x")
    cfg = yaml.safe_load((REPO / "config/coco_mini.yaml").read_text())
    cfg["data"]["root"] = str(root)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = smk(tmp_path / "work", "-n", "--cores", "1", "eval_voc", "--configfile", str(tmp_path / "cfg.yaml"),
              check=False)
    assert out.returncode != 0
    assert "eval_voc evaluates a VOC config, but this config has data.kind: coco" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def dot_test(tmp_path_factory):
    return finished_dot_test(tmp_path_factory)


def test_dot_test_runs_the_default_target(dot_test):
    log = (dot_test / "run.log").read_text()
    for rule in ("prepare_voc", "sam_embed", "train_cam", "train_seg", "eval_voc", "all"):
        assert re.search(rf"^(local)?rule {rule}:", log, flags=re.M), rule
    report = json.loads((dot_test / f"cache/test_voc/prepare_voc.json").read_text())
    assert report["ok"] and report["splits"]["train_aug"]["images"] > 0
    summary = (dot_test / "results" / RUN / "metrics" / "summary.tsv").read_text().splitlines()
    assert summary[0].split("\t")[0] == "class" and any(r.startswith("mIoU\t") for r in summary)
    assert "<table" in (dot_test / "results" / RUN / "metrics" / "summary.html").read_text()
    assert "Nothing to be done" in smk(dot_test, "-n", "--cores", "1").stdout
