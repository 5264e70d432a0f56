#!/usr/bin/env bash
# The demo twice from fresh clones of HEAD, once with the CPU kernels PyTorch and oneDNN pick for this
# machine and once on other code paths (ATen's scalar kernels, oneDNN capped at SSE4.1), as a stand-in
# for another CPU model; then bench/demo_cpu_paths.py compares them stage by stage.
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
(cd "$work/native" && .venv/bin/snakemake --cores 2 eval_voc >"$work/native.log" 2>&1)
(cd "$work/other" && ATEN_CPU_CAPABILITY=default DNNL_MAX_CPU_ISA=SSE41 \
  .venv/bin/snakemake --cores 2 eval_voc >"$work/other.log" 2>&1)
echo "commit $(git -C "$repo" rev-parse --short HEAD); A = native kernels, B = ATEN_CPU_CAPABILITY=default DNNL_MAX_CPU_ISA=SSE41"
"$work/native/.venv/bin/python" -W ignore "$repo/bench/demo_cpu_paths.py" "$work/native" "$work/other"
