"""Join the part stores of a SAM cache into a manifest, or verify a manifest / store.

    s2c sam_cache join --kind embed|se --parts p0.zarr p1.zarr ... --out manifest.json
    s2c sam_cache verify MANIFEST_OR_STORE [--quiet]

``join`` checks the parts are complete, built alike (model, checkpoint, settings, image list,
format version), numbered 0..N-1 once each and disjoint, then writes the manifest atomically (part
paths relative to it). ``verify`` checks every image's data decodes with the right shape and
prints ``kind n_images n_skipped bytes``; exit code 2 with a one-line message when it does not.
The layout is documented in :mod:`s2c.sam.cache`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import cli_main
from ..sam.cache import KINDS, join_parts, verify

@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c sam_cache", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("join", help="write the manifest of a cache's part stores")
    j.add_argument("--kind", required=True, choices=KINDS)
    j.add_argument("--parts", type=Path, nargs="+", required=True, help="the part stores, any order")
    j.add_argument("--out", type=Path, required=True, help="manifest JSON to write")
    v = sub.add_parser("verify", help="check a manifest or part store is complete and readable")
    v.add_argument("path", type=Path, help="manifest JSON or part store (.zarr)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.cmd == "join":
        man = join_parts(a.kind, a.parts, a.out)
        print(f"wrote {a.out}: {man['n_images']} images in {len(man['parts'])} parts, {len(man['skipped'])} skipped")
    else:
        rep = verify(a.path, progress=not a.quiet)
        print(json.dumps({"path": str(a.path), **rep}))
        print(f"OK {a.path}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
