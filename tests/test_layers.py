"""The package's import graph (docs/DESIGN.md, "Layers"): stages on top importing only the library,
never each other; library floors importing only downward; no import cycle; an import inside a
function only where it is optional or heavy, with a comment saying why.

The layers and the stage list are the import-linter contracts in pyproject.toml ([tool.importlinter]);
``lint-imports`` checks them from the command line too.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
# Files whose function-level imports are still being reworked (exempt from the comment rule);
# empty: every deferred import in s2c/ says why.
PENDING: set[str] = set()


def test_import_linter_contracts_are_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(exe), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "0 broken" in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]


def _cycles(graph) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.add(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
            elif w not in index:
                index[w] = low[w] = counter[0]
                counter[0] += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(edges[w])))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


def test_no_import_cycle():
    graph = grimp.build_graph("s2c", include_external_packages=False, cache_dir=None)
    assert _cycles(graph) == []


def _function_imports(path: Path):
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


def test_imports_inside_functions_say_why():
    """A deferred import needs a reason next to it: a comment on its line, or on the line above it
    (or above the run of import lines it belongs to)."""
    missing = []
    for path in sorted((REPO / "s2c").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in PENDING:
            continue
        lines = path.read_text().splitlines()
        for node in _function_imports(path):
            i = node.lineno - 1
            while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
                i -= 1  # the first line of a run of imports
            context = lines[node.lineno - 1:node.end_lineno] + [lines[i - 1] if i > 0 else ""]
            if not any("#" in line for line in context):
                missing.append(f"{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not missing, "imports inside functions without a comment saying why:\n" + "\n".join(missing)



def test_the_workflow_builds_its_dag_without_torch():
    """Every ``s2c`` module the Snakefiles import (to resolve the config when a DAG is built) loads
    neither torch nor OpenCV nor segment-anything: each snakemake call, a dry run included, would
    pay for them first. The section defaults those modules need live in s2c.defaults for this."""
    files = [REPO / "Snakefile", REPO / "workflow" / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    modules = sorted({m for path in files
                      for m in re.findall(r"^\s*(?:from|import)\s+(s2c[\w.]*)", path.read_text(), flags=re.M)})
    assert "s2c.sections" in modules, modules
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "print(sorted(k for k in ('torch', 'torchvision', 'cv2', 'segment_anything') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", f"importing {modules} loads {out.stdout.strip()}"
