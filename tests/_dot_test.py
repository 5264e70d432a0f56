"""The `.test` configuration (workflow catalog convention), run once per test session.

``finished_dot_test(tmp_path_factory)`` copies ``.test/config`` into a temporary folder (whose
``../weights`` links to the repository's weights folder, as ``.test`` itself sees it), runs
``snakemake --directory <copy>/.test`` with no target (the default target, ``all``) and returns
the working directory (``S2C_DOT_TEST_WORKDIR`` names a finished one to reuse instead).
tests/test_catalog.py and tests/test_report.py share the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
RUN = "test"  # .test/config/config.yaml: run

_done: dict[str, Path] = {}


def dot_test_copy(dest: Path) -> Path:
    """A copy of .test/ (its config only) at ``dest/.test``, with ``dest/weights`` → repo weights."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / ".test" / "config", dest / ".test" / "config")
    (REPO / "weights").mkdir(exist_ok=True)
    (dest / "weights").symlink_to(REPO / "weights")
    return dest / ".test"


def smk(workdir: Path, *args: str, check: bool = True, timeout: float = 1800, env=None):
    out = subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def finished_dot_test(tmp_path_factory) -> Path:
    """Working directory of a finished `.test` run (default target), made once per session."""
    if "work" not in _done and os.environ.get("S2C_DOT_TEST_WORKDIR"):
        _done["work"] = Path(os.environ["S2C_DOT_TEST_WORKDIR"])  # a finished run to reuse (development)
    if "work" not in _done:
        work = dot_test_copy(tmp_path_factory.mktemp("dot_test"))
        out = smk(work, "--cores", "2")
        (work / "run.log").write_text(out.stdout + out.stderr)
        _done["work"] = work
    return _done["work"]
