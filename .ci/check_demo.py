"""Compare the mIoUs the demo printed with the README's: exit 1 when a metric is missing from either
or differs by more than TOLERANCE points.

    python .ci/check_demo.py demo.log README.md
"""

from __future__ import annotations

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


def main(log: str, readme: str) -> int:
    printed = table(Path(log).read_text(errors="replace"))
    text = Path(readme).read_text()
    block = next((b for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) if "CAM (train)" in b), "")
    documented = table(block)
    if not documented:
        print(f"{readme}: no demo metric table (a code block with 'CAM (train)')")
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
