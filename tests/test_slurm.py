"""The workflow on a real SLURM cluster: the `.test` DAG through ``--workflow-profile profiles/slurm``.

``workflow/scripts/slurm_cluster.sh`` starts a private one-node cluster (munge, MariaDB + slurmdbd,
slurmctld, slurmd with two stand-in GPUs) under a temporary folder; the DAG is run once locally
and once with the slurm executor, whose ``train_cam`` job is killed with ``scancel`` after its first
epoch checkpoint; a rerun resumes it. Checked: every non-local rule ran as a SLURM job (sacct),
the GPU rules' ``gpu=1`` reached sbatch as ``--gpus=1`` in partition ``gpu`` (the sbatch command
lines are recorded by a wrapper) and SLURM granted ``gres/gpu=1``, and the outputs equal the local
run's.

Opt-in (root; installs Debian's slurm-wlm, munge and mariadb-server when missing; ~10 min on 2
cores)::

    .venv/bin/pytest -m slurm tests/test_slurm.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _dot_test import dot_test_copy, finished_dot_test

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow/scripts/slurm_cluster.sh"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
RUN = "test"  # .test/config/config.yaml
LOCAL_RULES = {"all", "prepare_voc", "eval_voc"}  # localrule: True (the head node runs them)
GPU_RULES = {"sam_embed", "sam_everything", "train_cam", "infer_cam", "train_seg", "eval_seg"}
# poll soon after submission; query the scheduler's accounting (sacct), not squeue (which forgets a
# finished job after MinJobAge)
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3",
             "--slurm-status-command", "sacct"]

pytestmark = pytest.mark.slurm


def _check(out: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if out.returncode != 0:
        raise AssertionError(f"{what} failed ({out.returncode}):\n{out.stdout[-5000:]}\n{out.stderr[-5000:]}")
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0 and shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("SLURM is not installed and installing it needs root")
    d = tmp_path_factory.mktemp("slurm")
    _check(subprocess.run(["bash", str(SCRIPT), "start", str(d)], capture_output=True, text=True, timeout=1200),
           "slurm_cluster.sh start")
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"), PATH=f"{d}/bin:/usr/sbin:{os.environ['PATH']}")
    try:
        yield d, env
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(d)], timeout=120)


def sacct(env) -> list[dict]:
    """Every allocation the scheduler recorded (one row per job, not per step)."""
    fields = ["JobID", "JobName", "Comment", "Partition", "State", "ExitCode", "ReqTRES", "AllocTRES"]
    out = _check(subprocess.run(["sacct", "-X", "-n", "-P", "-S", "2000-01-01", "-o", ",".join(fields)],
                                capture_output=True, text=True, env=env, timeout=60), "sacct")
    return [dict(zip(fields, line.split("|"))) for line in out.stdout.splitlines() if line.strip()]


def rule_of(comment: str) -> str:
    """The Snakemake rule of a SLURM job (the executor's --comment: rule_<name>[_wildcards_...])."""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    d, env = cluster
    base = tmp_path_factory.mktemp("runs")

    # the same config, run locally: the reference outputs
    local = finished_dot_test(tmp_path_factory)
    expected = _planned_rules(base / "fresh") - LOCAL_RULES

    # 1. through the slurm profile; scancel train_cam once its first epoch is checkpointed
    work = dot_test_copy(base / "slurm")
    cmd = [*SNAKEMAKE, "-d", str(work), "--workflow-profile", str(REPO / "profiles/slurm"), *FAST_POLL]
    ckpt = work / "results" / RUN / "cam" / "last.pt"
    with open(base / "slurm1.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 1500
            while not ckpt.exists():
                assert proc.poll() is None, (base / "slurm1.log").read_text()[-5000:]
                assert time.time() < deadline, "train_cam wrote no checkpoint in 25 minutes"
                time.sleep(0.2)
            queue = subprocess.run(["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True, env=env).stdout
            ids = [ln.split("|")[0] for ln in queue.splitlines() if rule_of(ln.split("|", 1)[1]) == "train_cam"]
            assert len(ids) == 1, queue
            subprocess.run(["scancel", ids[0]], check=True, env=env)
            # snakemake-executor-plugin-slurm 2.8 reads sacct's state "CANCELLED by <uid>", which is
            # not in its list of failed states, so it waits for the job forever: give it 90 s (a
            # plugin that notices ends the run), then stop Snakemake as a user would (Ctrl-C)
            try:
                rc, noticed = proc.wait(timeout=90), True
            except subprocess.TimeoutExpired:
                noticed = False
                # Ctrl-C as a user would, twice, then SIGTERM; Snakemake 9 with plugin 2.8 stuck in the
                # status loop of a scancelled job ignored all three here, so then kill -9 (the rerun
                # below unlocks first, as docs/USAGE.md says)
                rc = None
                for sig, wait_s in ((signal.SIGINT, 120), (signal.SIGINT, 60), (signal.SIGTERM, 60)):
                    proc.send_signal(sig)
                    try:
                        rc = proc.wait(timeout=wait_s)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                if rc is None:  # stuck in the plugin's status loop: kill -9, as docs/USAGE.md says
                    proc.kill()
                    rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc != 0, "the run with a cancelled job should fail"
    assert not (work / "results" / RUN / "cam" / "model.pt").exists()

    if not noticed:  # a stopped Snakemake may leave its lock (docs/USAGE.md, interrupted jobs)
        _check(subprocess.run([*SNAKEMAKE, "-d", str(work), "--unlock"], capture_output=True, text=True,
                              env=env, timeout=300), "unlock")
    # 2. the same command again: Snakemake resubmits the killed job, which resumes from last.pt
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    (base / "slurm2.log").write_text(second.stdout + second.stderr)
    _check(second, "slurm rerun")
    time.sleep(2)  # let slurmctld hand the last records to slurmdbd
    return {"local": local, "slurm": work, "cancelled": ids[0], "expected": expected, "cluster": d,
            "env": env, "base": base, "noticed": noticed}


def _planned_rules(workdir: Path) -> set[str]:
    wd = dot_test_copy(workdir)
    out = _check(subprocess.run([*SNAKEMAKE, "-d", str(wd), "-n", "--cores", "2"], capture_output=True,
                                text=True, timeout=300), "dry run")
    table = out.stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return set(re.findall(r"^(\w+)\s+\d+\s*$", table, flags=re.M))


def test_every_rule_ran_as_a_slurm_job(runs):
    rows = sacct(runs["env"])
    print("\n".join(f"{r['JobID']:>4} {rule_of(r['Comment']):<20} {r['Partition']:<4} {r['State']:<10} "
                    f"{r['AllocTRES']}" for r in rows))
    done = [rule_of(r["Comment"]) for r in rows if r["State"] == "COMPLETED"]
    # each planned job ran once to completion on SLURM (weights are fetched only when missing)
    assert set(done) - {"fetch_mobile_sam", "fetch_efficientnet_lite0"} == runs["expected"], (done, runs["expected"])
    assert sorted(done).count("figure_labels") == 2 and sorted(done).count("sam_cache_join") == 2
    assert not LOCAL_RULES & set(done)
    cancelled = [r for r in rows if r["JobID"] == runs["cancelled"]]
    assert cancelled and cancelled[0]["State"].startswith("CANCELLED") and rule_of(cancelled[0]["Comment"]) == "train_cam"
    assert done.count("train_cam") == 1


def test_killed_job_resumed_from_its_checkpoint(runs):
    log = (runs["slurm"] / "results" / RUN / "logs" / "train_cam.log").read_text()
    assert "resuming from" in log, log[-3000:]
    steps = [int(r.split(",")[0]) for r in
             (runs["slurm"] / "results" / RUN / "cam" / "losses.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(steps) + 1)) and steps  # no step lost or repeated


@pytest.mark.xfail(strict=False, reason="snakemake-executor-plugin-slurm 2.8 does not know sacct's "
                   "'CANCELLED by <uid>' state and waits for a scancelled job forever; an XPASS means a fixed "
                   "plugin makes this pass (then drop the SIGINT in the fixture)")
def test_snakemake_notices_a_scancelled_job(runs):
    assert runs["noticed"]


def test_gpu_requests_reach_sbatch_as_gpus(runs):
    lines = (runs["cluster"] / "sbatch.log").read_text().splitlines()
    seen = {}
    for line in lines:
        argv = shlex.split(line)
        # one whole sbatch call per line (the wrapper writes under a lock)
        assert argv[:1] == ["sbatch"] and argv.count("sbatch") == 1 and "--comment" in argv, line
        rule = rule_of(argv[argv.index("--comment") + 1])
        seen.setdefault(rule, []).append(argv)
    assert GPU_RULES <= set(seen), sorted(seen)
    for rule, calls in seen.items():
        for argv in calls:
            part = argv[argv.index("-p") + 1]
            if rule in GPU_RULES:
                assert "--gpus=1" in argv and part == "gpu", (rule, argv)
            else:
                assert not any(a.startswith(("--gpus", "--gres")) for a in argv) and part == "cpu", (rule, argv)
    print("\n".join(shlex.join(seen[r][-1]) for r in sorted(GPU_RULES)))
    for r in sacct(runs["env"]):
        if rule_of(r["Comment"]) in GPU_RULES and r["State"] == "COMPLETED":
            assert "gres/gpu=1" in r["AllocTRES"], r


def _tree(root: Path) -> set[str]:
    """The workflow's outputs (results/, cache/, data/), less logs and benchmarks (timings differ)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] in ("results", "cache", "data")
            and not {"logs", "benchmarks"} & set(p.relative_to(root).parts)}


def test_outputs_match_a_local_run(runs):
    local, slurm = runs["local"], runs["slurm"]
    files = _tree(local)
    assert files == _tree(slurm), sorted(files ^ _tree(slurm))
    # the dataset, the image lists and the report's summary layout are the same bytes
    for rel in sorted(f for f in files if f.startswith("data/")):
        assert (local / rel).read_bytes() == (slurm / rel).read_bytes(), rel
    for name in ("cam_train", "pseudo_train", "seg_val"):
        a = json.loads((local / "results" / RUN / "metrics" / f"{name}.json").read_text())
        b = json.loads((slurm / "results" / RUN / "metrics" / f"{name}.json").read_text())
        assert a.keys() == b.keys() and a["iou"].keys() == b["iou"].keys(), name
        assert b["miou"] == pytest.approx(a["miou"], abs=1e-6), (name, a["miou"], b["miou"])
