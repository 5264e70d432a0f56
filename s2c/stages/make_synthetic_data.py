"""Write the small synthetic VOC-layout dataset the demo and the tests run on.

The generator is :func:`s2c.data.synthetic.make_synthetic_voc`.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from ..data.synthetic import make_synthetic_voc
from ..errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> int:
    # the generator's own defaults, so that they are stated once
    d = {k: v.default for k, v in inspect.signature(make_synthetic_voc).parameters.items()}
    p = argparse.ArgumentParser(prog="s2c make_synthetic_data", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="output dataset folder (created/replaced)")
    p.add_argument("--n-train", type=int, default=d["n_train"], help="images in the train list")
    p.add_argument("--n-val", type=int, default=d["n_val"], help="images in the val list")
    p.add_argument("--n-aug", type=int, default=d["n_aug"], help="extra train_aug-only images")
    p.add_argument("--size", type=int, default=d["size"], help="long side in pixels")
    p.add_argument("--seed", type=int, default=d["seed"], help="the generator's seed")
    p.add_argument("--classes", default=",".join(d["classes"]), help="comma-separated VOC class names")
    a = p.parse_args(argv)
    make_synthetic_voc(a.root, a.n_train, a.n_val, a.size, a.seed, tuple(c.strip() for c in a.classes.split(",") if c.strip()), a.n_aug)
    print(f"wrote synthetic VOC dataset to {a.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
