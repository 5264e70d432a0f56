"""Compare the mIoUs the demo printed with the README's: exit 1 when a metric is missing from either
or differs by more than TOLERANCE points.

    python .ci/check_demo.py demo.log README.md

The README shows the demo's printout in a code block per kind of CPU, its info string naming the
kind (```text cpu=avx512); the block for this machine's kind is the one compared, an untagged block
stands for any CPU. The demo runs with `cpu_kernels: portable`, so its CAM and pseudo-label figures
repeat on every CPU tried so far, but the segmentation net's did not (docs/USAGE.md, "Determinism").
The check prints the machine, so a failure log says which CPU made the numbers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from s2c.machine import cpu_flags, cpu_kind, describe
from s2c.stages.summary import ROWS

TOLERANCE = 1.0
# the demo's three metric lines, named as s2c summary prints them
LABELS = "|".join(re.escape(ROWS[k]) for k in ("cam_train", "pseudo_train", "seg_val"))
ROW = re.compile(rf"^({LABELS})\s+(\d+\.\d+)", re.M)
FENCE = re.compile(r"```([^\n]*)\n(.*?)```", re.S)
CPU_TAG = re.compile(r"\bcpu=([A-Za-z0-9_]+)")


def table(text: str) -> dict[str, float]:
    """The last printed metric table in ``text``: {metric: mIoU}."""
    out: dict[str, float] = {}
    for name, v in ROW.findall(text):
        out[name] = float(v)  # later tables overwrite earlier ones
    return out


def readme_tables(text: str) -> dict[str | None, dict[str, float]]:
    """{cpu kind or None (untagged): metric table} of every README code block that holds one."""
    out: dict[str | None, dict[str, float]] = {}
    for info, body in FENCE.findall(text):
        rows = table(body)
        if rows:
            tag = CPU_TAG.search(info)
            out.setdefault(tag.group(1) if tag else None, rows)
    return out


def main(log: str, readme: str) -> int:
    printed = table(Path(log).read_text(errors="replace"))
    tables = readme_tables(Path(readme).read_text())
    kind = cpu_kind(cpu_flags()[1])
    print(f"machine: {describe()}")
    documented = tables.get(kind, tables.get(None))
    if not documented:
        known = ", ".join(sorted(k or "untagged" for k in tables)) or "none"
        print(f"{readme}: no demo metric table for cpu={kind} (code blocks with 'CAM (train)': {known}); "
              f"add this machine's printout as a block tagged cpu={kind}")
        return 1
    bad = 0
    for name, want in documented.items():
        got = printed.get(name)
        ok = got is not None and abs(got - want) <= TOLERANCE
        bad += not ok
        print(f"{name:<24} README {want:6.2f}  demo {'missing' if got is None else f'{got:6.2f}'}  {'ok' if ok else 'DIFFERS'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
