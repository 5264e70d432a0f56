#!/usr/bin/env bash
# The coco-plus ablation table (issue 10): Table 1 rows baseline / ssc_feature / s2c (on CPU also
# cpm_only), seeds 0 and 1, each with CAM, pseudo-label and segmentation mIoU, on
# ../shared/data/coco-plus, then copied to bench/results/coco_plus.tsv (columns: row seed steps
# warmup_steps probe_steps cam_miou floor_miou pseudo_miou seg_miou paper_voc_cam commit command). On
# CPU the rows start from a shared warm-up per seed (ablations.warmup in config/coco_plus_cpu.yaml: a
# probe_cam head on frozen features, then 10 epochs of L_CLS; the warm-up is a line of its own).
#
#   bash bench/coco_plus_table.sh            # CPU protocol: config/coco_plus_cpu.yaml overlay
#   bash bench/coco_plus_table.sh --gpu      # the dataset config alone (paper-like schedule)
#
# Resumable: Snakemake skips finished jobs and train_cam / train_seg continue from their last
# epoch checkpoint, so on a 2-core machine the ~9 h of CPU work can be spread over several runs.
set -euo pipefail
cd "$(dirname "$0")/.."
configs=(config/coco_plus.yaml config/coco_plus_cpu.yaml)
[ "${1:-}" = "--gpu" ] && configs=(config/coco_plus.yaml)
run=$(.venv/bin/python -c 'import sys, yaml; c = {}
for f in sys.argv[1:]: c.update(yaml.safe_load(open(f)))
print(c["run"])' "${configs[@]}")
.venv/bin/snakemake --cores "${CORES:-2}" ablations --configfile "${configs[@]}" --rerun-triggers mtime
mkdir -p bench/results
cp "results/${run}/ablations/ablations.tsv" bench/results/coco_plus.tsv
column -t -s $'\t' bench/results/coco_plus.tsv | cut -c1-150
