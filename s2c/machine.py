"""What a CPU result depends on besides the code and config: the CPU's kind and the kernels in use.

PyTorch's CPU kernels pick their vector code by the instruction set they find, so a figure made on
one kind of CPU repeats there but not always on another (``cpu_kernels``, :mod:`s2c.defaults`). The
demo's summary and the CI's demo check print :func:`describe`, so every printed figure says where it
was made. Torch-free: it reads ``/proc/cpuinfo`` and the environment only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .defaults import PORTABLE_CPU_ENV


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(CPU model name, instruction-set flags) of the first CPU; ("unknown CPU", set()) without a cpuinfo."""
    model, flags = "unknown CPU", set()
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return model, flags
    for line in lines:
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    return model, flags


def cpu_kind(flags: set[str]) -> str:
    """A CPU's kind, as the README's demo blocks are tagged: its widest vector instruction set."""
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"


def kernels(env: Mapping[str, str] = os.environ) -> str:
    """``portable`` when ``env`` holds :data:`s2c.defaults.PORTABLE_CPU_ENV`, else ``native``."""
    return "portable" if all(env.get(k) == v for k, v in PORTABLE_CPU_ENV.items()) else "native"


def describe(env: Mapping[str, str] | None = None, cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """``<model>, cpu=<kind>, <n> cores``, plus ``cpu_kernels <mode>`` when ``env`` is given (a job's)."""
    model, flags = cpu_flags(cpuinfo)
    parts = [model, f"cpu={cpu_kind(flags)}"]
    if env is not None:
        parts.append(f"cpu_kernels {kernels(env)}")
    return ", ".join(parts + [f"{os.cpu_count()} cores"])
