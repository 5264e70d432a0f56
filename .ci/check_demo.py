"""Compare the mIoUs the demo printed with the README's: exit 1 when a metric is missing from either
or differs by more than TOLERANCE points.

    python .ci/check_demo.py demo.log README.md

It also prints the CPU it ran on: the demo repeats to the last bit on one CPU model, but another
model's vector kernels round differently and the short training lands elsewhere (docs/USAGE.md,
"Determinism"), so a failure log must say which machine made the numbers.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

TOLERANCE = 1.0
ROW = re.compile(r"^(CAM \(train\)|pseudo-labels \(train\)|segmentation \(val\))\s+(\d+\.\d+)", re.M)


def table(text: str) -> dict[str, float]:
    """The last printed metric table in ``text``: {metric: mIoU}."""
    out: dict[str, float] = {}
    for name, v in ROW.findall(text):
        out[name] = float(v)  # later tables overwrite earlier ones
    return out


def machine() -> str:
    """CPU model, whether it has AVX-512, the vector code PyTorch picked, and the usable cores."""
    model, avx512 = "unknown CPU", False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                avx512 = " avx512f " in f" {line.split(':', 1)[1]} "
    except OSError:
        pass
    try:
        import torch

        kernels = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        kernels = "torch not importable"
    return f"{model}, AVX-512 {'yes' if avx512 else 'no'}, PyTorch CPU kernels {kernels}, {os.cpu_count()} cores"


def main(log: str, readme: str) -> int:
    printed = table(Path(log).read_text(errors="replace"))
    text = Path(readme).read_text()
    block = next((b for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) if "CAM (train)" in b), "")
    documented = table(block)
    if not documented:
        print(f"{readme}: no demo metric table (a code block with 'CAM (train)')")
        return 1
    print(f"machine: {machine()}")
    bad = 0
    for name, want in documented.items():
        got = printed.get(name)
        ok = got is not None and abs(got - want) <= TOLERANCE
        bad += not ok
        print(f"{name:<24} README {want:6.2f}  demo {'missing' if got is None else f'{got:6.2f}'}  {'ok' if ok else 'DIFFERS'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
