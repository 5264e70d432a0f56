"""`snakemake ablations`: the DAG of the paper's ablation rows, and the table stage."""

import csv
import json
import re

import pytest

from s2c.stages import ablations as at
from s2c.errors import S2CError
from test_workflow import REPO, smk


def _jobs(text: str) -> dict[str, int]:
    """rule → job count from a dry run's job-stats table."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}


def test_ablation_dag_rows_seeds_and_shared_cache(tmp_path):
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n", "--cores", "2", "ablations",
              "--configfile", str(REPO / "config/config.yaml"), "--config", "ablations={rows: [baseline, ssc_feature, s2c], seeds: [0, 1], pseudo: true}")
    jobs = _jobs(out.stdout + out.stderr)
    assert jobs["ablation_train_cam"] == 6 and jobs["ablation_eval_cam"] == 6
    assert jobs["ablation_pseudo_labels"] == 6 and jobs["ablation_eval_pseudo"] == 6
    assert jobs["sam_embed"] == 1 and jobs["sam_everything"] == 1  # one cache for every row
    assert jobs["ablations"] == 1 and "train_seg" not in jobs
    text = out.stdout
    for row in ("baseline", "ssc_feature", "s2c"):
        for seed in (0, 1):
            assert f"results/demo/ablations/{row}/seed{seed}/cam/model.pt" in text


def test_ablation_seg_trains_and_evaluates_a_seg_net_per_row(tmp_path):
    """ablations.seg: each (row, seed) gets its own pseudo-labels, seg net and val evaluation (the
    seg_miou column); the main run's train_seg is not part of it."""
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n", "--cores", "2", "ablations",
              "--configfile", str(REPO / "config/config.yaml"), "--config", "ablations={rows: [baseline, s2c], seeds: [0, 1], seg: true}")
    jobs = _jobs(out.stdout + out.stderr)
    assert jobs["ablation_pseudo_labels"] == 4 and jobs["ablation_eval_pseudo"] == 4  # implied by seg
    assert jobs["ablation_train_seg"] == 4 and jobs["ablation_eval_seg"] == 4
    assert "train_seg" not in jobs and "eval_seg" not in jobs
    for row in ("baseline", "s2c"):
        for seed in (0, 1):
            assert f"results/demo/ablations/{row}/seed{seed}/metrics/seg_val.json" in out.stdout


def test_ablation_baseline_needs_no_sam_cache(tmp_path):
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n", "--cores", "2", "ablations",
              "--configfile", str(REPO / "config/config.yaml"), "--config", "ablations={rows: [baseline]}", "pseudo={refine: none}")
    jobs = _jobs(out.stdout + out.stderr)
    assert jobs["ablation_train_cam"] == 1 and "sam_everything" not in jobs and "sam_embed" not in jobs


def test_ablation_unknown_row_fails_before_any_job(tmp_path):
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n", "--cores", "1", "ablations",
              "--configfile", str(REPO / "config/config.yaml"), "--config", "ablations={rows: [baselin]}", check=False)
    assert out.returncode != 0 and "baselin" in out.stdout + out.stderr


def _fake_run(root, row, seed, cam, floor, pseudo=None, steps=5):
    d = root / row / f"seed{seed}"
    (d / "metrics").mkdir(parents=True)
    (d / "cam").mkdir()
    (d / "metrics" / "cam_train.json").write_text(json.dumps(
        {"miou": cam, "iou": {}, "floors": {"centre_prior": {"miou": floor, "threshold": 0.3}}}))
    if pseudo is not None:
        (d / "metrics" / "pseudo_train.json").write_text(json.dumps({"miou": pseudo, "iou": {}}))
    (d / "cam" / "losses.csv").write_text("step,loss\n" + "".join(f"{i},1.0\n" for i in range(steps)))
    return d


def test_ablation_table_columns_means_and_paper(tmp_path, capsys):
    runs = [_fake_run(tmp_path, "baseline", 0, 20.0, 16.0, steps=7), _fake_run(tmp_path, "baseline", 1, 22.0, 16.0),
            _fake_run(tmp_path, "s2c", 0, 30.0, 16.0, pseudo=33.0), _fake_run(tmp_path, "s2c", 1, 28.0, 16.0)]
    out = tmp_path / "t.tsv"
    at.main(["--runs", *map(str, runs), "--out", str(out), "--command", "snakemake ablations"])
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    assert [r["row"] for r in rows] == ["baseline", "baseline", "s2c", "s2c"]
    assert set(at.COLUMNS) == set(rows[0]) and rows[0]["steps"] == "7" and rows[0]["floor_miou"] == "16.0"
    assert rows[2]["pseudo_miou"] == "33.0" and rows[3]["pseudo_miou"] == ""
    assert rows[0]["paper_voc_cam"] == "50.1" and rows[2]["paper_voc_cam"] == "76.1"
    assert rows[0]["command"] == "snakemake ablations"
    printed = capsys.readouterr().out
    # paired per seed: 30 − 20 = +10, 28 − 22 = +6 → mean +8.00 ± sd 2.83 over 2 seeds
    assert re.search(r"s2c\s+cam\s+s0:\+10\.00 s1:\+6\.00\s+\+8\.00\s+2\.83\s+2", printed)
    assert re.search(r"s2c\s+pseudo\s+", printed) is None  # no baseline pseudo-label to pair with


def test_ablation_table_counts_the_warmup_steps(tmp_path):
    """A row started from the shared warm-up (cam.init in its model.pt) counts the warm-up's steps
    in ``steps`` and names them in ``warmup_steps``; the warm-up itself is a line of its own."""
    import torch

    warm = _fake_run(tmp_path, "warmup", 0, 25.0, 16.0, steps=40)
    torch.save({"model": {}, "cam_cfg": {"ablation": "baseline"}, "num_classes": 20}, warm / "cam" / "model.pt")
    s2c = _fake_run(tmp_path, "s2c", 0, 27.0, 16.0, steps=4)
    torch.save({"model": {}, "cam_cfg": {"ablation": "s2c", "init": str(warm / "cam" / "model.pt")},
                "num_classes": 20}, s2c / "cam" / "model.pt")
    w, r = at.run_row(warm, "", ""), at.run_row(s2c, "", "")
    assert (w["row"], w["steps"], w["warmup_steps"], w["probe_steps"]) == ("warmup", 40, None, None)
    assert (r["steps"], r["warmup_steps"], r["probe_steps"]) == (44, 40, None)
    # with warmup.probe the warm-up started from a probe_cam model: its head steps are named, not counted
    probe = tmp_path / "probe" / "seed0" / "model.pt"
    probe.parent.mkdir(parents=True)
    torch.save({"model": {}, "cam_cfg": {}, "num_classes": 20, "probe": {"steps": 3000}}, probe)
    torch.save({"model": {}, "cam_cfg": {"ablation": "baseline", "init": str(probe)}, "num_classes": 20},
               warm / "cam" / "model.pt")
    w, r = at.run_row(warm, "", ""), at.run_row(s2c, "", "")
    assert (w["steps"], w["warmup_steps"], w["probe_steps"]) == (40, None, 3000)
    assert (r["steps"], r["warmup_steps"], r["probe_steps"]) == (44, 40, 3000)


def test_ablation_warmup_is_shared_by_the_rows_of_a_seed(tmp_path):
    """ablations.warmup: one L_CLS-only run per seed, of warmup.epochs; every row of that seed
    starts from its model.pt (cam.init) with warmup.cam over the cam section."""
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n", "-p", "--cores", "2", "ablations",
              "--configfile", str(REPO / "config/config.yaml"), "--config",
              "ablations={rows: [baseline, s2c], seeds: [0, 1], warmup: {epochs: 3, cam: {epochs: 1, cpm: {start_step: 0, start_fraction: null}}}}",
              "pseudo={refine: none}")
    jobs = _jobs(out.stdout + out.stderr)
    assert jobs["ablation_train_cam"] == 6 and jobs["ablation_eval_cam"] == 6  # 2 warm-ups + 2 rows x 2 seeds
    cmds = {m.group(2): json.loads(m.group(1)) for m in re.finditer(
        r"--cfg '(\{[^']*\})' --sam-cfg .*? > results/demo/ablations/(\w+/seed\d)/logs/train_cam.log", out.stdout)}
    assert set(cmds) == {f"{r}/seed{s}" for r in ("warmup", "baseline", "s2c") for s in (0, 1)}
    assert cmds["warmup/seed1"]["ablation"] == "baseline" and cmds["warmup/seed1"]["epochs"] == 3
    assert "init" not in cmds["warmup/seed1"]
    s2c = cmds["s2c/seed1"]
    # --config gives strings for the untyped warmup.cam (train_cam coerces them by its defaults)
    assert s2c["init"] == "results/demo/ablations/warmup/seed1/cam/model.pt" and int(s2c["epochs"]) == 1
    assert int(s2c["cpm"]["start_step"]) == 0 and s2c["cpm"]["min_distance"] == 10 and s2c["seed"] == 1  # merged over config.yaml's cpm
    assert "results/demo/ablations/warmup/seed0/metrics/cam_train.json" in out.stdout  # its CAMs in the table


def test_ablation_warmup_starts_from_a_probe(tmp_path):
    """ablations.warmup.probe: per seed, a probe_cam job (seeded by the row's seed) whose model.pt the
    warm-up starts from; the rows still start from the warm-up."""
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n", "-p", "--cores", "2", "ablations",
              "--configfile", str(REPO / "config/config.yaml"), "--config",
              "ablations={rows: [baseline, cpm_only], seeds: [0, 1], warmup: {epochs: 2, probe: {long_side: 64, steps: 7}}}",
              "pseudo={refine: none}")
    text = out.stdout + out.stderr
    jobs = _jobs(text)
    assert jobs["ablation_probe_cam"] == 2 and jobs["ablation_train_cam"] == 6
    probes = {m.group(2): json.loads(m.group(1)) for m in re.finditer(
        r"--probe '(\{[^']*\})' --out results/demo/ablations/probe/(seed\d)/model\.pt", out.stdout)}
    assert probes == {f"seed{s}": {"long_side": 64, "steps": 7, "seed": s} for s in (0, 1)}
    cmds = {m.group(2): json.loads(m.group(1)) for m in re.finditer(
        r"--cfg '(\{[^']*\})' --sam-cfg .*? > results/demo/ablations/(\w+/seed\d)/logs/train_cam.log", out.stdout)}
    assert cmds["warmup/seed1"]["init"] == "results/demo/ablations/probe/seed1/model.pt"
    assert cmds["cpm_only/seed1"]["init"] == "results/demo/ablations/warmup/seed1/cam/model.pt"
    assert cmds["cpm_only/seed1"]["ablation"] == "cpm_only"


def test_ablation_table_rejects_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(S2CError, match="seed<N>"):
        at.run_row(tmp_path / "x", "", "")


def _se_stores(text: str) -> set[str]:
    return set(re.findall(r"cache/\S+?/(se-[0-9a-f]{8})\.part\d+\.zarr", text))


def test_se_store_is_named_by_its_settings(tmp_path):
    """Two SE densities on one dataset: two SE stores (se-<tag>), one shared embedding store."""
    from s2c.defaults import settings_tag

    runs = {}
    for pps in (4, 8):
        out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n", "--cores", "2", "ablations",
                  "--configfile", str(REPO / "config/config.yaml"),
                  "--config", f"sam={{everything: {{points_per_side: {pps}}}}}", "ablations={rows: [s2c]}")
        runs[pps] = _se_stores(out.stdout)
        assert runs[pps] == {f"se-{settings_tag({'points_per_side': pps})}"}
        assert "embed.part0.zarr" in out.stdout
    assert runs[4] != runs[8]
    assert settings_tag({"points_per_side": 8, "points_per_batch": 16}) == settings_tag({"points_per_side": 8})


def test_coco_plus_gpu_overlay_plans_the_table(tmp_path):
    """bench/coco_plus_gpu.sh's configs: the CPU overlay's table (its rows, seeds and warm-up) over one
    32-points-per-side SE store; the CPU overlay's settings otherwise."""
    import yaml

    from s2c.defaults import settings_tag
    from test_workflow import _with_fake_inputs

    merged = yaml.safe_load((REPO / "config/coco_plus.yaml").read_text())
    for name in ("coco_plus_cpu.yaml", "coco_plus_gpu.yaml"):
        for k, v in yaml.safe_load((REPO / "config" / name).read_text()).items():
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    cpu = yaml.safe_load((REPO / "config/coco_plus_cpu.yaml").read_text())
    assert merged["sam"]["everything"]["points_per_side"] == 32
    assert all(merged["ablations"][k] == v for k, v in cpu["ablations"].items())
    assert merged["cam"]["micro_batch"] == cpu["cam"]["micro_batch"]
    src = tmp_path / "gpu.yaml"
    src.write_text(yaml.safe_dump(merged))
    cfg = _with_fake_inputs(tmp_path, src)
    a = cpu["ablations"]
    targets = [f"results/{merged['run']}/ablations/{row}/seed{seed}/metrics/cam_train.json"
               for row in a["rows"] for seed in a["seeds"]]
    out = smk("-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n", *targets, "--cores", "16",
              "--resources", "gpu=8", "--configfile", str(cfg))
    jobs = _jobs(out.stdout + out.stderr)
    n_seeds = len(a["seeds"])
    assert jobs["ablation_train_cam"] == (len(a["rows"]) + 1) * n_seeds  # + the shared warm-up
    assert jobs["ablation_probe_cam"] == n_seeds and jobs["sam_everything"] == 1
    assert _se_stores(out.stdout) == {f"se-{settings_tag({'points_per_side': 32})}"}


def test_ablation_table_merges_an_earlier_table(tmp_path, capsys):
    """--merge keeps an earlier table's lines (their own commit and command) for the (row, seed)
    pairs the new runs do not provide; a new run replaces its old line."""
    old = tmp_path / "old.tsv"
    at.main(["--runs", str(_fake_run(tmp_path / "a", "baseline", 0, 20.0, 16.0, pseudo=25.0)),
             str(_fake_run(tmp_path / "a", "s2c", 0, 21.0, 16.0)), str(_fake_run(tmp_path / "a", "baseline", 1, 22.0, 16.0)),
             str(_fake_run(tmp_path / "a", "s2c", 1, 25.0, 16.0)), "--out", str(old), "--command", "first"])
    capsys.readouterr()
    assert at.read_table(old)[0] == at.run_row(tmp_path / "a" / "baseline" / "seed0", at.git_commit(), "first")
    out = tmp_path / "new.tsv"
    at.main(["--runs", str(_fake_run(tmp_path / "b", "s2c", 0, 24.0, 16.0)), "--out", str(out),
             "--command", "second", "--merge", str(old)])
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    assert [(r["row"], r["seed"], r["cam_miou"], r["command"]) for r in rows] == [
        ("baseline", "0", "20.0", "first"), ("s2c", "0", "24.0", "second"),
        ("baseline", "1", "22.0", "first"), ("s2c", "1", "25.0", "first")]
    assert rows[0]["pseudo_miou"] == "25.0" and rows[1]["pseudo_miou"] == ""
    # paired over both seeds, old and new lines alike: 24 − 20 = +4, 25 − 22 = +3
    assert re.search(r"s2c\s+cam\s+s0:\+4\.00 s1:\+3\.00\s+\+3\.50", capsys.readouterr().out)
    # merging a table into itself with no runs rewrites it unchanged
    again = tmp_path / "again.tsv"
    at.main(["--out", str(again), "--merge", str(out)])
    assert again.read_text() == out.read_text()


def test_ablation_table_merge_names_a_bad_table(tmp_path):
    with pytest.raises(S2CError, match="no such table"):
        at.read_table(tmp_path / "missing.tsv")
    (tmp_path / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(S2CError, match="x.tsv: not an ablation table"):
        at.read_table(tmp_path / "x.tsv")


def test_coco_plus_table_script_plans_the_rows_asked(tmp_path):
    """bench/coco_plus_table.sh with ROWS / SEEDS: CAM runs for those rows and seeds only, and
    pseudo-labels + seg nets only for the baseline / s2c rows among them (a dry run on a stand-in
    dataset: the script's own target list, the repo's configs)."""
    import os
    import subprocess

    import yaml

    from test_workflow import _with_fake_inputs

    fake = yaml.safe_load(_with_fake_inputs(tmp_path, "config/coco_plus.yaml").read_text())
    overlay = tmp_path / "data.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"root": fake["data"]["root"]}}))
    env = {**os.environ, "ROWS": "warmup baseline cpm_only", "SEEDS": "0 1", "ALL_SEEDS": "1",
           "OVERLAY": str(overlay), "OUT": str(tmp_path / "table"), "SMK_ARGS": f"-n -d {tmp_path / 'w'}"}
    out = subprocess.run(["bash", str(REPO / "bench/coco_plus_table.sh")], env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    jobs = _jobs(out.stdout + out.stderr)
    assert jobs["ablation_train_cam"] == 3 * 2 and jobs["ablation_probe_cam"] == 2
    assert jobs["ablation_pseudo_labels"] == 2 and jobs["ablation_train_seg"] == 2  # the baseline's, not s2c's
    assert "no finished run" in out.stderr and not (tmp_path / "table.tsv").exists()
