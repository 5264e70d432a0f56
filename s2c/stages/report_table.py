"""A TSV table as a self-contained HTML page, for the Snakemake report.

Snakemake's HTML report offers a TSV only as a download; an HTML file is shown inline. Usage:
``s2c report_table results/<run>/metrics/summary.tsv --title "..." --out summary.html``.
The first row is the header; the row whose first cell is ``mIoU`` is set in bold; empty cells
(classes absent from a split's ground truth) stay empty.
"""

from __future__ import annotations

import argparse
import csv
import html
from pathlib import Path

from ..errors import S2CError, cli_main
from ..io import atomic_path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #1e293b; }
h1 { font-size: 1.1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #cbd5e1; padding: 0.25em 0.6em; }
th { background: #e2e8f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.miou td { font-weight: bold; background: #f1f5f9; }
"""


def tsv_to_html(rows: list[list[str]], title: str) -> str:
    if not rows or not rows[0]:
        raise S2CError("the table is empty: nothing to render")
    head, body = rows[0], rows[1:]
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
           '<table id="metrics"><thead><tr>', *(f"<th>{html.escape(c)}</th>" for c in head), "</tr></thead><tbody>"]
    for row in body:
        cls = ' class="miou"' if row and row[0].strip().lower() == "miou" else ""
        cells = [f"<td>{html.escape(row[0])}</td>" if row else "<td></td>"]
        cells += [f'<td class="num">{html.escape(c)}</td>' for c in row[1:]]
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</tbody></table></body></html>")
    return "\n".join(out) + "\n"


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="s2c report_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("tsv", type=Path)
    ap.add_argument("--title", default="Metrics")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if not a.tsv.is_file():
        raise S2CError(f"table not found: {a.tsv}")
    with open(a.tsv, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t")]
    page = tsv_to_html(rows, a.title)
    with atomic_path(a.out) as tmp:
        Path(tmp).write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
