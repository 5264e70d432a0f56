"""One line per CAM source — CAM mIoU and the pseudo-label mIoU with each refinement
(argmax, denseCRF, SAM post-processing), optionally the seg mIoU — beside the paper's Table 5.

The paper's Table 5 compares WSSS methods with and without the SAM-based post-processing of Chen et
al. 2023; here the sources are the run's own CAMs (row ``main``) and any folder of another
code's CAMs (``table5.sources``), all post-processed by the same code over the same SE cache.

``--rows`` is JSON ``{name: {"source": text, "cam": json, "pseudo": {refine: json}, "seg": json | null,
"paper": {"pseudo": %, "pseudo_sam": %, "seg": %}}}`` (metrics JSON paths of eval_cam, eval_pseudo,
eval_seg). Writes a TSV (the Snakemake report shows it) and prints the table.

CLI::

    s2c table5 --rows '{...}' --out results/run/table5/table5.tsv
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from ..cli import parse_json_arg
from ..errors import S2CError, cli_main
from ..io import atomic_path
from ..metrics import read_metrics
from ..sections import REFINEMENTS

__all__ = ["table5_rows", "write_table5", "main"]

PAPER_KEYS = ("pseudo", "pseudo_sam", "seg")


def _fmt(v) -> str:
    return "" if v is None else f"{float(v):.2f}"


def table5_rows(rows: dict) -> tuple[list[str], list[dict]]:
    """(columns, one dict per source) from the metrics files ``rows`` names."""
    if not isinstance(rows, dict) or not rows:
        raise S2CError("table5: --rows must be a non-empty JSON object {name: {...}}")
    refines = [r for r in REFINEMENTS if any(r in (spec.get("pseudo") or {}) for spec in rows.values())]
    has_seg = any(spec.get("seg") for spec in rows.values())
    cols = ["source", "cams", "cam_miou", "threshold", *[f"pseudo_{r}" for r in refines]]
    cols += ["sam_gain"] if {"none", "sam"} <= set(refines) else []
    cols += ["seg_miou"] if has_seg else []
    cols += [f"paper_{k}" for k in PAPER_KEYS]
    out = []
    for name, spec in sorted(rows.items(), key=lambda kv: kv[0] != "main"):  # the run's own row first
        cam = read_metrics(spec["cam"]) if spec.get("cam") else {}
        line = {"source": name, "cams": spec.get("source", ""), "cam_miou": _fmt(cam.get("miou")),
                "threshold": "" if cam.get("threshold") is None else f"{cam['threshold']:g}"}
        pseudo = {r: read_metrics(p).get("miou") for r, p in (spec.get("pseudo") or {}).items()}
        for r in refines:
            line[f"pseudo_{r}"] = _fmt(pseudo.get(r))
        if "sam_gain" in cols:
            ok = pseudo.get("none") is not None and pseudo.get("sam") is not None
            line["sam_gain"] = f"{pseudo['sam'] - pseudo['none']:+.2f}" if ok else ""
        if has_seg:
            line["seg_miou"] = _fmt(read_metrics(spec["seg"]).get("miou")) if spec.get("seg") else ""
        paper = spec.get("paper") or {}
        for k in PAPER_KEYS:
            line[f"paper_{k}"] = _fmt(paper.get(k))
        out.append(line)
    return cols, out


def write_table5(rows: dict, out: str | Path) -> str:
    """Write the TSV ``out`` atomically; returns the printed (aligned) table."""
    cols, lines = table5_rows(rows)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, cols, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(lines)
    widths = {c: max(len(c), *(len(x[c]) for x in lines)) for c in cols}
    buf = io.StringIO()
    buf.write("  ".join(c.ljust(widths[c]) for c in cols) + "\n")
    for x in lines:
        buf.write("  ".join(x[c].ljust(widths[c]) for c in cols) + "\n")
    return buf.getvalue()


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s2c table5", description=__doc__.split("\n")[0])
    p.add_argument("--rows", required=True, help="JSON (or @file.json): the sources and their metrics files")
    p.add_argument("--out", type=Path, required=True, help="output TSV")
    a = p.parse_args(argv)
    print(write_table5(parse_json_arg(a.rows, "--rows"), a.out), end="")
    return 0


if __name__ == "__main__":
    main()
