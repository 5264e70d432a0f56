"""`snakemake --report report.html` in a real headless browser (Debian's chromium, driven by
Playwright): the page loads without errors and shows the metrics table, the per-class IoU charts,
the CAM / pseudo-label / segmentation panels and the loss curves. One screenshot per view, and a
contact sheet of them all (``$S2C_REPORT_SCREENSHOT``, else a temporary file):

    S2C_REPORT_SCREENSHOT=bench/results/report_screenshot.png .venv/bin/pytest tests/test_report.py -s

Needs ``apt-get install chromium`` (the CI script installs it); skips without it unless CI is set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _dot_test import RUN, finished_dot_test, smk

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
R = f"results/{RUN}"
# (sidebar path, file) of every report item the page must show
VIEWS = [
    (["Metrics", "Summary"], f"{R}/metrics/summary.html"),
    (["Metrics", "CAM"], f"{R}/figures/cam_train_iou.png"),
    (["Metrics", "Pseudo-labels"], f"{R}/figures/pseudo_train_iou.png"),
    (["Figures"], f"{R}/figures/cams_train.png"),
    (["Figures"], f"{R}/figures/pseudo_panels.png"),
    (["Figures"], f"{R}/figures/seg_panels.png"),
    (["Training"], f"{R}/cam/losses.png"),
    (["Training"], f"{R}/cam/cpm_diag.png"),
    (["Training"], f"{R}/seg/losses.png"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    work = finished_dot_test(tmp_path_factory)
    out = work / "report.html"
    smk(work, "--report", str(out))
    return out


@pytest.fixture(scope="module")
def browser_views(report, tmp_path_factory):
    """Open the report, visit every view; returns (console/page errors, failed requests, checks, shots)."""
    from playwright.sync_api import sync_playwright

    shots_dir = tmp_path_factory.mktemp("shots")
    errors, failed, checks, shots = [], [], {}, []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=ARGS,
            headless=True, viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: failed.append(f"{r.url[:120]}: {r.failure}"))
        page.goto(report.as_uri(), wait_until="load")
        page.wait_for_selector("text=Results", timeout=30_000)
        home = page.inner_text("body")
        page.screenshot(path=str(shots_dir / "home.png"))
        shots.append(shots_dir / "home.png")
        for nav, item in VIEWS:
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_selector("text=Results", timeout=30_000)
            for label in nav:
                page.get_by_text(label, exact=True).first.click()
                page.wait_for_timeout(300)
            row = page.locator("tr", has_text=item).first
            row.wait_for(timeout=10_000)
            row.locator("a[iconname=eye]").click()
            page.wait_for_timeout(1000)
            if item.endswith(".html"):
                frames = [f for f in page.frames if f.locator("table#metrics").count()]
                ok = bool(frames) and "mIoU" in frames[0].inner_text("table#metrics")
            else:
                name = Path(item).name
                ok = page.evaluate(
                    "(n) => Array.from(document.images).some(i => i.src.includes('filename=' + n)"
                    " && i.complete && i.naturalWidth > 100)", name)
            checks[item] = ok
            shot = shots_dir / (item.replace("/", "_") + ".png")
            page.screenshot(path=str(shot))
            shots.append(shot)
        ctx.close()
    return {"errors": errors, "failed": failed, "checks": checks, "shots": shots, "home": home}


def test_report_loads_without_errors(browser_views):
    assert browser_views["errors"] == [], browser_views["errors"]
    assert browser_views["failed"] == [], browser_views["failed"]
    for section in ("Workflow", "Statistics", "Metrics", "Figures", "Training"):
        assert section in browser_views["home"], section


@pytest.mark.parametrize("item", [v[1] for v in VIEWS])
def test_report_shows(browser_views, item):
    assert browser_views["checks"][item], f"{item} did not render in the browser"


def test_screenshot_sheet(browser_views, tmp_path):
    """All views on one PNG (the closing note's screenshot)."""
    from PIL import Image

    tiles = [Image.open(s).convert("RGB") for s in browser_views["shots"]]
    w, h = tiles[0].size
    scale = 0.5
    tw, th = int(w * scale), int(h * scale)
    cols = 3
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * tw, rows * th), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t.resize((tw, th)), ((i % cols) * tw, (i // cols) * th))
    out = Path(os.environ.get("S2C_REPORT_SCREENSHOT") or tmp_path / "report_screenshot.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    assert out.stat().st_size > 10_000
    print(f"report screenshot: {out}")
