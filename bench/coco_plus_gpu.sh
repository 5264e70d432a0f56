#!/usr/bin/env bash
# Issue 10's coco-plus ablation table on one GPU in about ten minutes: Table 1 rows baseline /
# ssc_feature / s2c × seeds 0, 1 over ../shared/data/coco-plus, each with CAM, pseudo-label and
# segmentation mIoU, at the paper's segment-everything density (config/coco_plus_gpu.yaml over
# config/coco_plus.yaml). The six CAM runs (and then the six seg runs) share the one GPU side by
# side: CUDA_VISIBLE_DEVICES is set, so s2c.gpu_slot leaves the device alone, and --resources gpu
# lets JOBS of them run at once (an EfficientNet-Lite0 step at batch 8 leaves most of the GPU idle).
#
#   bash bench/coco_plus_gpu.sh              # on the GPU machine (carry .venv and weights/)
#   bash bench/coco_plus_gpu.sh --dry-run    # the job plan only, anywhere
#   JOBS=3 bash bench/coco_plus_gpu.sh       # fewer runs at once
#
# Writes bench/results/coco_plus_gpu_<GPU name>.tsv (the columns of bench/results/coco_plus.tsv)
# and prints the table and the wall time. Resumable like every Snakemake run: cut off at a time
# limit, run it again and finished jobs are kept (train_cam / train_seg continue from their epoch).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-6}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
configs=(config/coco_plus.yaml config/coco_plus_gpu.yaml)
dry=()
[ "${1:-}" = "--dry-run" ] && dry=(-n)
start=$(date +%s)
.venv/bin/snakemake ablations --cores "$(nproc)" --resources gpu="$JOBS" --rerun-triggers mtime "${dry[@]}" \
    --set-threads ablation_train_cam=2 ablation_train_seg=2 ablation_infer_cam=2 ablation_eval_seg=2 \
    --configfile "${configs[@]}"
[ ${#dry[@]} -gt 0 ] && exit 0
name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9\n' '_')
mkdir -p bench/results
out="bench/results/coco_plus_gpu_${name:-cpu}.tsv"
cp results/coco_plus_gpu_s2c/ablations/ablations.tsv "$out"
column -t -s $'\t' "$out" | cut -c1-150
echo "wall $(( $(date +%s) - start )) s on ${name:-no GPU}, JOBS=$JOBS -> $out"
