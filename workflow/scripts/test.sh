#!/usr/bin/env bash
# The README's test command: set up .venv (once), lint the workflow, run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash workflow/scripts/bootstrap.sh
.venv/bin/snakemake --lint --cores 1 > .snakemake-lint.txt 2>&1 || { cat .snakemake-lint.txt; exit 1; }
if grep -qiE "lints for|error" .snakemake-lint.txt; then cat .snakemake-lint.txt; exit 1; fi
exec .venv/bin/pytest "$@"
