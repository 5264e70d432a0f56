#!/usr/bin/env bash
# The README's test command: set up .venv (once), lint the workflow (snakemake --lint, snakefmt)
# and the package's import layers (lint-imports), run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash workflow/scripts/bootstrap.sh
.venv/bin/snakemake --lint --cores 1 > .snakemake-lint.txt 2>&1 || { cat .snakemake-lint.txt; exit 1; }
if grep -qiE "lints for|error" .snakemake-lint.txt; then cat .snakemake-lint.txt; exit 1; fi
# every Snakefile formatted (snakefmt settings: [tool.snakefmt] in pyproject.toml)
.venv/bin/snakefmt --check Snakefile workflow/Snakefile workflow/rules/*.smk \
  || { echo "Snakefiles not snakefmt-clean: run .venv/bin/snakefmt Snakefile workflow/" >&2; exit 1; }
# the import contracts of pyproject.toml [tool.importlinter] (docs/DESIGN.md, "Layers")
.venv/bin/lint-imports --no-cache > .lint-imports.txt 2>&1 || { cat .lint-imports.txt; exit 1; }
exec .venv/bin/pytest "$@"
