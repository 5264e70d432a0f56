"""GPU pinning: concurrent jobs take distinct slots; the lock is held by the exec'd job."""

import os
import subprocess
import sys

from s2c import gpu_slot


def test_slots_are_distinct_and_released(tmp_path):
    a, fd_a = gpu_slot.acquire_slot(2, tmp_path)
    b, fd_b = gpu_slot.acquire_slot(2, tmp_path)
    assert {a, b} == {0, 1}
    os.close(fd_a)
    c, fd_c = gpu_slot.acquire_slot(2, tmp_path, wait_s=1)
    assert c == a
    os.close(fd_b), os.close(fd_c)


def test_lock_survives_exec(tmp_path, monkeypatch):
    """A job started through the wrapper keeps its slot until it exits."""
    env = dict(os.environ, S2C_GPU_LOCK_DIR=str(tmp_path))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: x)'\necho 'GPU 1: Fake (UUID: y)'\n")
    smi.chmod(0o755)
    env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    code = "import os,time,sys; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(3)"
    p1 = subprocess.Popen([sys.executable, "-m", "s2c.gpu_slot", sys.executable, "-c", code], env=env,
                          stdout=subprocess.PIPE, text=True)
    first = p1.stdout.readline().strip()
    p2 = subprocess.run([sys.executable, "-m", "s2c.gpu_slot", sys.executable, "-c", code.replace("3", "0")],
                        env=env, capture_output=True, text=True, timeout=60)
    p1.wait(timeout=60)
    assert {first, p2.stdout.strip()} == {"0", "1"}


def test_respects_scheduler_choice(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="3", S2C_GPU_LOCK_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "s2c.gpu_slot", sys.executable, "-c",
                          "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "3"
    assert not list(tmp_path.glob("*.lock"))
