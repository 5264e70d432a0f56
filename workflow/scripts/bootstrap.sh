#!/usr/bin/env bash
# Create (once) the project's virtual environment at .venv/ and install s2c with its test extras.
# Re-running is cheap: it reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "s2c needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.s2c-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# torch first and pinned: 2.14.1/0.29.1 are on these machines' disk; elsewhere pip takes the
# platform's build. torchvision must match torch (segment-anything imports it).
if ! .venv/bin/python -c 'import torch, torchvision' 2>/dev/null; then
  "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1" || "${pip[@]}" torch torchvision
fi
"${pip[@]}" -e ".[test]"
echo "$want" > "$stamp"
