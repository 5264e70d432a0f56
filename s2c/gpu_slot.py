"""Pin a GPU job to one device: ``s2c --gpu-slot STAGE ARGS...`` (the rules), or
``python -m s2c.gpu_slot CMD ARGS...`` for any command (exec'd with the lock held).

Snakemake counts a ``gpu`` resource but never says *which* GPU a job may use, so two jobs started
together would both land on cuda:0. Each GPU rule runs through this wrapper: it takes the first free
slot lock ``<lock_dir>/gpu<i>.lock`` (``flock``), sets ``CUDA_VISIBLE_DEVICES=i`` and replaces itself
with the command, keeping the lock open across ``exec`` so the slot is held until the job ends (also
when the job is killed: the kernel drops the lock). With the default profile's ``gpu`` limit equal to
the number of GPUs a free slot always exists.

Nothing is changed when a scheduler already chose the device (``CUDA_VISIBLE_DEVICES`` set, e.g.
by SLURM) or when the machine has no GPU.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def count_gpus() -> int:
    """Number of NVIDIA GPUs, asked of nvidia-smi (no CUDA context in this short-lived process)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def acquire_slot(n_gpus: int, lock_dir: Path, wait_s: float = 3600.0) -> tuple[int, int]:
    """Lock the first free slot in 0..n_gpus-1. Returns (slot, inheritable fd holding the lock)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for i in range(n_gpus):
            fd = os.open(lock_dir / f"gpu{i}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.set_inheritable(fd, True)
            return i, fd
        if time.monotonic() > deadline:
            raise SystemExit(f"s2c.gpu_slot: no free GPU slot among {n_gpus} after {wait_s:.0f}s")
        time.sleep(2.0)


def pin() -> int | None:
    """Pin this process (and what it execs or spawns) to a free GPU slot: sets CUDA_VISIBLE_DEVICES
    and returns the fd holding the slot's lock (keep it open for the job's life). None when a
    scheduler already chose the device or the machine has no GPU."""
    env = os.environ
    if "CUDA_VISIBLE_DEVICES" in env:
        return None
    n = count_gpus()
    if n == 0:
        return None
    lock_dir = Path(env.get("S2C_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / f"s2c-gpu-{os.getuid()}"))
    slot, fd = acquire_slot(n, lock_dir)
    env["CUDA_VISIBLE_DEVICES"] = str(slot)
    print(f"s2c.gpu_slot: CUDA_VISIBLE_DEVICES={slot}", file=sys.stderr, flush=True)
    return fd


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m s2c.gpu_slot CMD [ARGS...]")
    pin()
    os.execvp(argv[0], argv)

if __name__ == "__main__":
    main()
