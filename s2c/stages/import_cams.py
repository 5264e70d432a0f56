"""Another code's CAMs (or pseudo-labels) into s2c's files, checked against the dataset.

Subcommands (formats and checks: :mod:`s2c.cam_import`)::

    s2c import_cams cams --source irn_cams/ --format irn --data-cfg '{...}' --split train_aug \
        --out results/run/cams/train_aug.h5 [--normalize]
    s2c import_cams pseudo --source labels/ --data-cfg '{...}' --split train_aug \
        --out results/run/pseudo/train_aug
    s2c import_cams export --cams results/run/cams/train_aug.h5 --format irn --out irn_cams/

``cams`` writes the CAM store that infer_cam would write (eval_cam, pseudo_labels and the figures
read it unchanged); ``pseudo`` the folder pseudo_labels would write (train_seg reads it); ``export``
writes a CAM store in another code's format (the round trip of ``cams``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cam_import import CAM_FORMATS, export_cams, import_cams, import_pseudo_labels
from ..cli import parse_json_arg
from ..data import open_dataset
from ..errors import cli_main

__all__ = ["main"]


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c import_cams", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cams", help="a folder of per-image CAM files → CAM store (HDF5)")
    c.add_argument("--source", type=Path, required=True, help="folder of <id>.npy / <id>.npz CAM files")
    c.add_argument("--format", choices=CAM_FORMATS, required=True, help="how the files are written")
    c.add_argument("--normalize", action="store_true", help="divide each map by its max (maps not in [0, 1])")
    l = sub.add_parser("pseudo", help="a folder of <id>.png pseudo-labels → the pseudo-label folder")
    l.add_argument("--source", type=Path, required=True, help="folder of <id>.png label maps")
    for q in (c, l):
        q.add_argument("--data-cfg", required=True, help="JSON of the config's data section")
        q.add_argument("--split", required=True, help="split whose every id must be present")
        q.add_argument("--out", type=Path, required=True, help="output store (cams) or folder (pseudo)")
    e = sub.add_parser("export", help="a CAM store → a folder in another code's format")
    e.add_argument("--cams", type=Path, required=True, help="CAM store (infer_cam or import_cams output)")
    e.add_argument("--format", choices=CAM_FORMATS, required=True)
    e.add_argument("--out", type=Path, required=True, help="output folder")
    for q in (c, l, e):
        q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    if a.cmd == "export":
        export_cams(a.cams, a.format, a.out, progress=not a.no_progress)
    else:
        ds = open_dataset(parse_json_arg(a.data_cfg, "--data-cfg"), a.split)
        if a.cmd == "cams":
            import_cams(a.source, a.format, ds, a.out, a.normalize, progress=not a.no_progress)
        else:
            import_pseudo_labels(a.source, ds, a.out, progress=not a.no_progress)
    print(f"import_cams {a.cmd}: wrote {a.out}")
    return 0


if __name__ == "__main__":
    main()
