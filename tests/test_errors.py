"""Output paths that cannot be written: every stage CLI exits 2 with one line naming the path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from s2c.errors import S2CError, cli_main

READ_ONLY = Path("/sys/s2c-out")  # sysfs refuses new entries even to root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def _targets(tmp_path: Path) -> list[Path]:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = [blocker / "sub"]  # ENOTDIR: a parent is a file
    if Path("/sys").is_dir():
        out.append(READ_ONLY)
    return out


def test_synthetic_data_into_unwritable_folder(tmp_path):
    for target in _targets(tmp_path):
        r = _run("s2c.stages.make_synthetic_data", "--root", str(target), "--n-train", "2", "--n-val", "1", "--size", "32")
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith("s2c: error:") and str(target) in line and "path" in line, r.stderr


def test_sam_cache_part_into_unwritable_folder(synthetic_voc, tmp_path):
    for target in _targets(tmp_path):
        r = _run("s2c.stages.sam_embed", "--data-cfg", json.dumps({"kind": "voc", "root": str(synthetic_voc)}),
                 "--split", "val", "--out", str(target / "embed.part0.zarr"), "--device", "cpu",
                 "--cfg", json.dumps({"model_type": "vit_test", "num_workers": 0}))
        assert r.returncode == 2, r.stderr
        assert "s2c: error:" in r.stderr and str(target) in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_cli_main_maps_file_system_errors_only():
    @cli_main
    def full_disk():
        raise OSError(28, "No space left on device", "/data/x.zarr")

    @cli_main
    def bad_input():
        raise S2CError("x")

    @cli_main
    def other():
        raise OSError(5, "Input/output error")

    with pytest.raises(SystemExit) as e:
        full_disk()
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        bad_input()
    with pytest.raises(OSError):  # not a user-fixable path problem: the traceback is kept
        other()


def test_one_line_unwraps_a_dataloader_worker_error():
    from s2c.errors import one_line

    wrapped = ("Caught S2CError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise S2CError("m")\ns2c.errors.S2CError: store s.zarr, image a: gone')
    assert one_line(wrapped) == "store s.zarr, image a: gone"
    assert one_line("plain message") == "plain message"
