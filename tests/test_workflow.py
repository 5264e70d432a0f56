"""The Snakemake workflow: lint, full-DAG dry runs for every shipped config, config validation."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def smk(*args, cwd=REPO, check=True):
    out = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def test_lint_is_clean():
    out = smk("--lint", "--cores", "1")
    assert "Lints for" not in out.stdout + out.stderr


def test_gpu_rules_ask_for_cores():
    """A rule holding the one gpu slot runs alone on a CPU-only machine: without ``threads:``
    Snakemake would give it OMP_NUM_THREADS=1 (measured: segment everything at half speed)."""
    import re

    for f in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", f.read_text(), re.S | re.M):
            if re.search(r"^\s+gpu=1", body, re.M):
                assert re.search(r"^    threads: \d+", body, re.M), f"{f.name}: rule {name} holds gpu=1 without threads:"


#: an instances json naming one image, a.jpg (what the DAG-time check parses)
COCO_STAND_IN = ('{"images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}], '
                 '"annotations": [], "categories": []}')


def _with_fake_inputs(tmp_path, configfile):
    """Point a real-dataset config at an empty stand-in dataset + checkpoint so the DAG resolves."""
    cfg = yaml.safe_load((REPO / configfile).read_text())
    if cfg.get("synthetic", {}).get("enabled"):
        return REPO / configfile  # its data is made by the DAG
    root = tmp_path / "data"
    if cfg["data"]["kind"] == "voc":
        lists = [root / "ImageSets/Segmentation" / f"{s}.txt" for s in cfg["splits"].values()]
    else:
        lists = [root / "annotations" / f"instances_{s}.json" for s in cfg["splits"].values()]
    for f in lists:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("a\n" if cfg["data"]["kind"] == "voc" else COCO_STAND_IN)
    # what the DAG-time layout check (s2c.stages.prepare, quick) looks for: one listed image and its mask
    if cfg["data"]["kind"] == "voc":
        stand_ins = ["JPEGImages/a.jpg", "SegmentationClass/a.png"]
    else:
        stand_ins = [f"{s}/a.jpg" for s in cfg["splits"].values()]
    for rel in stand_ins:  # one byte: the check counts a 0-byte image as missing
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    cfg["data"]["root"] = str(root)
    if cfg["sam"].get("checkpoint"):
        cfg["sam"]["checkpoint"] = str(tmp_path / "sam.pth")
        (tmp_path / "sam.pth").touch()
    if isinstance(cfg.get("cam", {}).get("pretrained"), str):
        cfg["cam"]["pretrained"] = str(tmp_path / "r38.params")
        (tmp_path / "r38.params").touch()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/voc.yaml", "config/coco.yaml",
                                        "config/coco_mini.yaml"])
def test_full_dag_dry_run(configfile, tmp_path):
    if configfile.endswith("coco_mini.yaml") and not (REPO / "../shared/data/coco-mini").is_dir():
        pytest.skip("../shared/data/coco-mini absent")
    cfg = _with_fake_inputs(tmp_path, configfile)
    work = tmp_path / "work"  # an empty working directory: nothing is done yet, whatever the repo holds
    kind = yaml.safe_load(cfg.read_text())["data"]["kind"]
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(work), "-n", "--cores", "2", f"eval_{kind}",
              "--configfile", str(cfg))
    text = out.stdout + out.stderr
    for rule in ("sam_embed", "sam_everything", "train_cam", "infer_cam", "eval_cam", "pseudo_labels",
                 "eval_pseudo", "train_seg", "eval_seg", "figure_cams", "figure_labels", f"eval_{kind}"):
        assert rule in text, (rule, text)


def _bad_config(tmp_path, mutate):
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c.update(lerning_rate=0.1), "lerning_rate"),
    (lambda c: c["sam"].update(parts="two"), "parts"),
    (lambda c: c["sam"].update(model_type="vit_x"), "vit_x"),
    (lambda c: c["data"].update(kind="cityscapes"), "cityscapes"),
    (lambda c: c["sam"]["everything"].update(overlap="largest"), "largest"),
    (lambda c: c["cam"].update(lrr=0.1), "cam.lrr"),
    (lambda c: c["cam"].setdefault("cpm", {}).update(taux=0.1), "cam.cpm.taux"),
    (lambda c: c["seg"].update(epoch=3), "epoch"),
    (lambda c: c["cam"].update(ablation="no_such_row"), "no_such_row"),
    (lambda c: (c["synthetic"].update(enabled=False), c["data"].update(root="/nonexistent/VOC")), "data.root"),
])
def test_bad_config_fails_before_any_job(tmp_path, mutate, needle):
    out = smk("-n", "--cores", "1", "eval_voc", "--configfile", str(_bad_config(tmp_path, mutate)), check=False)
    assert out.returncode != 0
    assert needle in out.stdout + out.stderr


def test_coco_official_layout_builds_the_dag(tmp_path):
    """The official COCO layout (``train2017/``, ``annotations/instances_train2017.json``) without
    data.coco_splits: the rules ask s2c.data for each split's list file, found as COCODataset finds it."""
    cfg = yaml.safe_load((REPO / "config/coco.yaml").read_text())
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for s in dict.fromkeys(cfg["splits"].values()):
        (root / f"{s}2017").mkdir()
        (root / f"{s}2017" / "a.jpg").write_bytes(b"x")
        (root / "annotations" / f"instances_{s}2017.json").write_text(COCO_STAND_IN)
    cfg["data"]["root"] = str(root)
    cfg["data"].pop("coco_splits", None)
    for key, section in (("checkpoint", "sam"), ("pretrained", "cam")):
        cfg[section][key] = str(tmp_path / f"{section}.weights")
        (tmp_path / f"{section}.weights").touch()
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "work"), "-n", "--cores", "1", "eval_coco",
              "--configfile", str(tmp_path / "cfg.yaml"))
    text = out.stdout + out.stderr
    assert f"{root}/annotations/instances_train2017.json" in text and "instances_train.json" not in text, text
    assert "sam_embed" in text and "train_seg" in text, text


def _shell_arg(text: str, stage: str, flag: str) -> str:
    """The value of ``flag`` in the first printed shell command that runs ``s2c <stage>``."""
    import re
    import shlex

    for line in text.splitlines():
        if re.search(rf"\bs2c (--gpu-slot )?{stage} ", line):
            args = shlex.split(line)
            return args[args.index(flag) + 1]
    raise AssertionError(f"no s2c {stage} command in:\n{text}")


def test_vit_h_default_checkpoint_and_sam_section_reach_the_rules(tmp_path):
    """sam.checkpoint null with vit_h means ``<weights_dir>/sam_vit_h_4b8939.pth`` (as
    s2c.weights.resolve_sam_checkpoint loads it), and the cache rules pass every key their stage
    takes of the sam section (s2c.sections), sam.num_workers included."""
    import json

    from s2c.sections import SAM_EMBED_DEFAULTS, SAM_EVERYTHING_DEFAULTS

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "sam_vit_h_4b8939.pth").touch()
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "work"), "-n", "-p", "--cores", "1", "eval_voc",
              "--configfile", str(REPO / "config/config.yaml"),
              "--config", f"weights_dir={weights}", "sam={model_type: vit_h, checkpoint: null, num_workers: 3}")
    text = out.stdout + out.stderr
    assert str(weights / "sam_vit_h_4b8939.pth") in text, text
    embed = json.loads(_shell_arg(text, "sam_embed", "--cfg"))
    everything = json.loads(_shell_arg(text, "sam_everything", "--cfg"))
    assert set(embed) == set(SAM_EMBED_DEFAULTS) and set(everything) == set(SAM_EVERYTHING_DEFAULTS)
    assert embed["num_workers"] == everything["num_workers"] == 3 and embed["model_type"] == "vit_h"
