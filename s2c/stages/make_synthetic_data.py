"""Write the small synthetic VOC-layout dataset the demo and the tests run on.

The generator is :func:`s2c.data.synthetic.make_synthetic_voc`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.synthetic import DEFAULT_CLASSES, make_synthetic_voc
from ..errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c make_synthetic_data", description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, required=True, help="output dataset folder (created/replaced)")
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--n-aug", type=int, default=0, help="extra train_aug-only images")
    p.add_argument("--size", type=int, default=192, help="long side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES), help="comma-separated VOC class names")
    a = p.parse_args(argv)
    make_synthetic_voc(a.root, a.n_train, a.n_val, a.size, a.seed, tuple(c.strip() for c in a.classes.split(",") if c.strip()), a.n_aug)
    print(f"wrote synthetic VOC dataset to {a.root}")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
