"""A small real run of the demo workflow, then what researchers do with it: kill a training job and
rerun (it resumes), and edit the config (only the affected stages rerun, checked with dry runs).

One run of the whole DAG (MobileSAM, EfficientNet-Lite0, 6 synthetic images at 64 px) in a
temporary working directory; the weights directory is the repository's, so a machine that already
fetched the weights does not fetch them again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
RUN = "tiny"
CAM_EPOCHS = 4


def tiny_config(weights_dir: Path) -> dict:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["run"] = RUN
    cfg["dataset"] = "tiny_voc"
    cfg["weights_dir"] = str(weights_dir)
    cfg["device"] = "cpu"
    cfg["data"]["root"] = "data/tiny_voc"
    cfg["synthetic"].update(n_train=6, n_val=3, size=64, seed=1)
    cfg["sam"]["everything"] = {"points_per_side": 4}
    cfg["cam"].update(epochs=CAM_EPOCHS, batch_size=2,
                      augment={"resize_long": [64, 96], "crop_size": 64},
                      cpm={"start_epoch": 1, "min_distance": 4})
    cfg["infer_cam"] = {"scales": [1.0], "flip": False}
    cfg["seg"].update(epochs=1, batch_size=3, crop_size=64)
    return cfg


def smk(workdir: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    out = subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args, "--configfile", str(workdir / "cfg.yaml")],
                         capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def planned_rules(workdir: Path, cfg: dict) -> set[str]:
    """Rules a dry run of ``eval_voc`` would execute under the config ``cfg``."""
    path = workdir / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([*SNAKEMAKE, "-d", str(workdir), "--configfile", str(path), "-n", "--cores", "2",
                          "eval_voc"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return set(re.findall(r"^(\w+)\s+\d+\s*$", table, flags=re.M))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run whose train_cam job was killed with SIGKILL once and rerun."""
    work = tmp_path_factory.mktemp("pipeline")
    cfg = tiny_config(REPO / "weights")
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    cam_dir = work / "results" / RUN / "cam"

    # 1. run up to train_cam and kill the whole process group once its first epoch is checkpointed
    cmd = [*SNAKEMAKE, "-d", str(work), "--cores", "2", f"results/{RUN}/cam/model.pt",
           "--configfile", str(work / "cfg.yaml")]
    with open(work / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 900
        while not (cam_dir / "last.pt").exists():
            assert proc.poll() is None, (work / "first.log").read_text()[-4000:]
            assert time.time() < deadline, "train_cam wrote no checkpoint in 15 minutes"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = torch.load(cam_dir / "last.pt", weights_only=False)["epoch"]
    assert killed_at < CAM_EPOCHS, "the kill came after training finished; the test needs more epochs"
    assert not (cam_dir / "model.pt").exists()

    # 2. a killed Snakemake leaves its lock: unlock (docs/USAGE.md, interrupted jobs), then rerun the
    # user-facing target: Snakemake reruns the incomplete job, which resumes from last.pt
    assert smk(work, "--cores", "2", "eval_voc", check=False).returncode != 0  # locked
    smk(work, "--unlock", "--cores", "1")
    smk(work, "--cores", "2", "--rerun-incomplete", "eval_voc")
    return work, killed_at


def test_demo_dag_runs_and_writes_the_three_metrics(run_dir):
    work, _ = run_dir
    metrics = work / "results" / RUN / "metrics"
    for name in ("cam_train", "pseudo_train", "seg_val"):
        m = json.loads((metrics / f"{name}.json").read_text())
        assert 0.0 <= m["miou"] <= 100.0 and m["iou"], name
    for fig in ("cams_train.png", "pseudo_panels.png", "seg_panels.png"):
        assert (work / "results" / RUN / "figures" / fig).stat().st_size > 0, fig
    assert "Nothing to be done" in smk(work, "-n", "--cores", "2", "eval_voc").stdout


def test_killed_train_cam_resumed_from_its_checkpoint(run_dir):
    work, killed_at = run_dir
    log = (work / "results" / RUN / "logs" / "train_cam.log").read_text()
    assert f"at epoch {killed_at}" in log and "resuming from" in log, log[-2000:]
    steps = [int(r.split(",")[0]) for r in
             (work / "results" / RUN / "cam" / "losses.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == CAM_EPOCHS * 3  # no step lost or repeated


def _edited(mutate) -> dict:
    cfg = tiny_config(REPO / "weights")
    mutate(cfg)
    return cfg


CACHE_RULES = {"sam_embed", "sam_everything", "sam_cache_join"}
CAM_ON = {"train_cam", "infer_cam", "eval_cam", "pseudo_labels", "eval_pseudo", "train_seg", "eval_seg"}


def test_trainer_edit_reruns_training_and_downstream_not_the_cache(run_dir):
    rules = planned_rules(run_dir[0], _edited(lambda c: c["cam"].update(lr=c["cam"].get("lr", 0.02) * 0.5)))
    assert CAM_ON <= rules and not rules & CACHE_RULES, rules


def test_sam_generator_edit_reruns_segment_everything_not_the_embeddings(run_dir):
    rules = planned_rules(run_dir[0], _edited(lambda c: c["sam"]["everything"].update(pred_iou_thresh=0.8)))
    assert {"sam_everything", "sam_cache_join"} | CAM_ON <= rules and "sam_embed" not in rules, rules


def test_seg_edit_reruns_only_the_segmentation_network(run_dir):
    rules = planned_rules(run_dir[0], _edited(lambda c: c["seg"].update(lr=0.002)))
    assert {"train_seg", "eval_seg"} <= rules <= {"train_seg", "eval_seg", "figure_labels", "eval_voc"}, rules


def test_unrelated_edit_reruns_nothing(run_dir):
    # the ablation sweep's seeds reach only the `ablations` target's rules
    rules = planned_rules(run_dir[0], _edited(lambda c: c.update(ablations={"seeds": [0, 3]})))
    assert rules <= {"eval_voc"}, rules


def test_html_report_holds_metrics_and_figures(run_dir):
    work, _ = run_dir
    smk(work, "--report", str(work / "report.html"), "eval_voc")
    html = (work / "report.html").read_text(errors="replace")
    for name in ("summary.tsv", "cam_train_iou.png", "losses.png", "seg_panels.png"):
        assert name in html, name
