"""The pipeline's stages: one module per Snakemake rule (or rule family), each callable alone.

``s2c STAGE ARGS...`` (the console command the rules run) and ``python -m s2c STAGE ARGS...`` run
``s2c.stages.STAGE.main(ARGS)``; ``python -m s2c.stages.STAGE ARGS...`` does the same.
``s2c --help`` lists the stages with the first line of each module's docstring, read without
importing the stage (no torch import for a help text). ``s2c --gpu-slot STAGE ...`` first pins the
process to a free GPU (:mod:`s2c.gpu_slot`); the GPU rules run through it.

Stages import the library (everything outside this package) and never each other: the import-linter
contracts in ``pyproject.toml`` keep it so.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

from ..gpu_slot import pin

USAGE = "usage: s2c [--gpu-slot] STAGE [ARGS...]   (s2c STAGE --help: the stage's flags)"


def stage_names() -> list[str]:
    """Every stage module of this package, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def first_line(name: str) -> str:
    """First line of a stage's docstring, parsed from its source."""
    src = Path(__path__[0], f"{name}.py").read_text()
    doc = ast.get_docstring(ast.parse(src)) or ""
    return doc.strip().split("\n")[0]


def help_text() -> str:
    names = stage_names()
    width = max(map(len, names))
    lines = [USAGE, "", "stages:"] + [f"  {n:<{width}}  {first_line(n)}" for n in names]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    gpu_slot = bool(argv) and argv[0] == "--gpu-slot"
    if gpu_slot:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    if name not in stage_names():
        print(f"s2c: no stage {name!r}\n\n{help_text()}", file=sys.stderr)
        return 2
    _lock = None
    if gpu_slot:
        _lock = pin()  # held (open) until this process exits
    code = importlib.import_module(f"{__name__}.{name}").main(args)
    return int(code or 0)
