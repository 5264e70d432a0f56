#!/usr/bin/env bash
# The demo twice from fresh clones of HEAD, once with the CPU kernels PyTorch and oneDNN pick for this
# machine (cpu_kernels: native) and once with the demo's cpu_kernels: portable (ATen's scalar kernels,
# oneDNN capped at SSE4.1); then bench/demo_cpu_paths.py compares them stage by stage. Run on two CPU
# models, the B columns tell whether portable repeats across them.
#
#   bash bench/demo_cpu_paths.sh [WORKDIR]     # default /tmp/s2c_cpu_paths; ~20 min on 2 idle cores
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/s2c_cpu_paths}
mkdir -p "$work"
for kind in native other; do
  rm -rf "$work/$kind"
  git clone -q "$repo" "$work/$kind"
  (cd "$work/$kind" && bash workflow/scripts/bootstrap.sh >"$work/$kind.bootstrap.log" 2>&1) \
    || { echo "bootstrap failed in $work/$kind: see $work/$kind.bootstrap.log" >&2; exit 1; }
done
(cd "$work/native" && .venv/bin/snakemake --cores 2 eval_voc --config cpu_kernels=native >"$work/native.log" 2>&1)
(cd "$work/other" && .venv/bin/snakemake --cores 2 eval_voc --config cpu_kernels=portable >"$work/other.log" 2>&1)
echo "commit $(git -C "$repo" rev-parse --short HEAD); A = cpu_kernels: native, B = cpu_kernels: portable (the demo's)"
"$work/native/.venv/bin/python" -c "from s2c.machine import describe; print('machine:', describe())"
"$work/native/.venv/bin/python" -W ignore "$repo/bench/demo_cpu_paths.py" "$work/native" "$work/other"
