"""Provision the pretrained weights a run needs (MobileSAM, EfficientNet-Lite0) into a weights folder.

Rules ``fetch_mobile_sam`` / ``fetch_efficientnet_lite0``; the locating, download and checksum logic
is :mod:`s2c.weights`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import cli_main
from ..weights import EFFNET_LITE0_FILE, MOBILE_SAM_FILE, ensure_efficientnet_lite0, ensure_mobile_sam


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c fetch_weights", description=__doc__.split("\n")[0])
    p.add_argument("--weights-dir", type=Path, required=True, help="directory holding pretrained weights")
    p.add_argument("--mobile-sam", action="store_true", help=f"provision {MOBILE_SAM_FILE}")
    p.add_argument("--efficientnet-lite0", action="store_true", help=f"provision {EFFNET_LITE0_FILE}")
    args = p.parse_args(argv)
    both = not (args.mobile_sam or args.efficientnet_lite0)
    if args.mobile_sam or both:
        print(ensure_mobile_sam(args.weights_dir))
    if args.efficientnet_lite0 or both:
        print(ensure_efficientnet_lite0(args.weights_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
