"""Tests for s2c.train_utils: device choice, poly LR, checkpoints, resumable CSV log, plot, DDP helpers."""

import csv

import numpy as np
import pytest
import torch

from s2c.errors import S2CError
from s2c import train_utils as tu
from s2c.models import unwrap


def test_select_device_cpu_and_auto(monkeypatch):
    assert tu.select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tu.select_device("auto") == torch.device("cpu")
    with pytest.raises(S2CError, match="CUDA is not available"):
        tu.select_device("cuda")
    with pytest.raises(S2CError, match="use auto, cpu"):
        tu.select_device("tpu")


def test_select_device_cuda_uses_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert tu.select_device("auto") == torch.device("cuda", 2)
    assert tu.select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(S2CError, match="only 4"):
        tu.select_device("cuda:7")


def test_seed_everything_reproducible():
    tu.seed_everything(3)
    a = (np.random.rand(), torch.rand(2))
    tu.seed_everything(3)
    b = (np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_poly_lr():
    assert tu.poly_lr(0.02, 0, 100) == pytest.approx(0.02)
    assert tu.poly_lr(0.02, 50, 100) == pytest.approx(0.02 * 0.5**0.9)
    assert tu.poly_lr(0.02, 100, 100) == 0.0
    assert tu.poly_lr(0.02, 150, 100) == 0.0
    lrs = [tu.poly_lr(1.0, s, 10) for s in range(11)]
    assert all(x > y for x, y in zip(lrs, lrs[1:]))


def test_checkpointer_roundtrip_and_errors(tmp_path):
    ck = tu.Checkpointer(tmp_path / "ck")
    assert ck.load() is None
    m = torch.nn.Linear(3, 2)
    ck.save({"epoch": 1, "model": m.state_dict(), "rng": tu.rng_state()})
    st = ck.load()
    assert st["epoch"] == 1 and torch.equal(st["model"]["weight"], m.weight)
    # no temp files left around
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.pt"]
    with pytest.raises(S2CError, match="epoch"):
        ck.save({"model": {}})
    (tmp_path / "ck" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(S2CError, match="delete it"):
        ck.load()


def test_rng_state_restores_streams():
    st = tu.rng_state()
    a = torch.rand(3), np.random.rand()
    tu.set_rng_state(st)
    b = torch.rand(3), np.random.rand()
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def _rows(p):
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_resume_truncates(tmp_path):
    p = tmp_path / "losses.csv"
    with tu.CSVLogger(p, ["step", "loss"]) as lg:
        for s in range(5):
            lg.log({"step": s, "loss": torch.tensor(float(s))})
    # a killed run logged steps 0..4 but its checkpoint covers 3 steps: resume at 3
    with open(p, "a") as f:
        f.write("5,0.")  # half-written line of the killed run
    with tu.CSVLogger(p, ["step", "loss"], resume_step=3) as lg:
        lg.log({"step": 3, "loss": 9.0})
    rows = _rows(p)
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[-1]["loss"]) == 9.0
    # a fresh run (no resume) starts over
    with tu.CSVLogger(p, ["step", "loss"]) as lg:
        pass
    assert _rows(p) == []


def test_plot_csv_writes_png(tmp_path):
    p = tmp_path / "l.csv"
    with tu.CSVLogger(p, ["step", "a", "b"]) as lg:
        for s in range(4):
            lg.log({"step": s, "a": s * 0.5, "b": ""})
    out = tu.plot_csv(p, tmp_path / "l.png", ["a", "b", "missing"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ddp_helpers_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert tu.ddp_init() == (0, 1, 0)
    assert tu.is_main()
    t = torch.tensor([2.0])
    assert tu.all_reduce_mean(t) is t
    m = torch.nn.Linear(1, 1)
    assert unwrap(m) is m
    wrapped = torch.nn.Module()
    wrapped.module = m  # what DistributedDataParallel holds
    assert unwrap(wrapped) is m
    tu.ddp_cleanup()
