#!/usr/bin/env bash
# The coco-plus Table 1 of bench/coco_plus_table.sh (config/coco_plus_cpu.yaml's rows, seeds and
# warm-up protocol) on one GPU at the paper's segment-everything density, 32 points per side
# (config/coco_plus_gpu.yaml), every seed at once: CUDA_VISIBLE_DEVICES is set, so s2c.gpu_slot
# leaves the device alone, and --resources gpu lets JOBS runs share the GPU (an EfficientNet-Lite0
# step at batch 8 leaves most of it idle).
#
#   bash bench/coco_plus_gpu.sh              # on the GPU machine (weights/ and the data in place)
#   bash bench/coco_plus_gpu.sh --dry-run    # the job plan only, anywhere
#   JOBS=4 bash bench/coco_plus_gpu.sh       # fewer runs at once (each takes 2 threads)
#   ROWS="warmup baseline s2c" bash bench/coco_plus_gpu.sh   # some rows (see coco_plus_table.sh)
#
# Writes bench/results/coco_plus_gpu_<GPU name>.tsv/.txt (the columns of bench/results/coco_plus.tsv,
# per-seed paired differences against the baseline) and prints the wall time. Resumable like every
# Snakemake run. SMK_ARGS adds Snakemake arguments (e.g. --scheduler greedy where PuLP is absent),
# EXTRA_CONFIG one more config file (e.g. the data's place on that machine).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-8}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
dry=""
[ "${1:-}" = "--dry-run" ] && dry="-n"
name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9\n' '_' || true)
start=$(date +%s)
OVERLAY="config/coco_plus_gpu.yaml ${EXTRA_CONFIG:-}" OUT="bench/results/coco_plus_gpu_${name:-cpu}" ALL_SEEDS=1 CORES="$(( 2 * JOBS ))" \
  STAMP="bash bench/coco_plus_gpu.sh (JOBS=$JOBS)" \
  SMK_ARGS="$dry --resources gpu=$JOBS --set-threads ablation_probe_cam=2 ablation_train_cam=2 ablation_train_seg=2 ablation_infer_cam=2 ablation_eval_seg=2 ablation_pseudo_labels=2 ${SMK_ARGS:-}" \
  bash bench/coco_plus_table.sh
echo "wall $(( $(date +%s) - start )) s on ${name:-no GPU}, JOBS=$JOBS"
