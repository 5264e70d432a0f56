#!/usr/bin/env bash
# The coco-plus Table 1 on ../shared/data/coco-plus: every ablations.rows entry × ablations.seeds
# (config/coco_plus_cpu.yaml: baseline, ssc_feature, cpm_only, s2c and the CPM diagnostics
# cpm_oracle / cpm_sam_iou; seeds 0, 1, 2) with its CAM mIoU, plus pseudo-label (SAM
# post-processing) and segmentation mIoU for baseline and s2c, seed by seed so that the first seeds
# are complete before the next starts. Then bench/results/coco_plus.tsv (columns: row seed steps
# warmup_steps probe_steps cam_miou floor_miou pseudo_miou seg_miou paper_voc_cam commit command;
# with --gpu: coco_plus_full.tsv) and the printed table with per-seed paired differences against
# the baseline (mean ± sd). An existing table is merged (s2c ablations --merge): its lines for runs
# whose folders are not here (another machine, an earlier session) stay, with their own commit.
#
#   bash bench/coco_plus_table.sh            # CPU protocol: config/coco_plus_cpu.yaml overlay
#   bash bench/coco_plus_table.sh --gpu      # the dataset config alone (paper-like schedule)
#   SEEDS="0" bash bench/coco_plus_table.sh  # some seeds only
#   ROWS="baseline s2c" bash bench/coco_plus_table.sh   # some rows only (the warm-up is built as
#                                            # their input either way; name it to score it)
#
# Environment: OVERLAY (more config files over the CPU overlay, e.g. config/coco_plus_gpu.yaml),
# OUT (the table's path without .tsv), ALL_SEEDS=1 (one Snakemake call over every seed, so that the
# seeds' jobs run side by side), SMK_ARGS (more Snakemake arguments), CORES, STAMP (the
# command the table names); bench/coco_plus_gpu.sh sets them for one GPU.
#
# Resumable: Snakemake skips finished jobs and train_cam / train_seg continue from their last
# epoch checkpoint, so on a 2-core machine the work can be spread over several sessions.
set -euo pipefail
cd "$(dirname "$0")/.."
configs=(config/coco_plus.yaml config/coco_plus_cpu.yaml)
out=bench/results/coco_plus
if [ "${1:-}" = "--gpu" ]; then configs=(config/coco_plus.yaml); out=bench/results/coco_plus_full; fi
read -r -a overlays <<< "${OVERLAY:-}"
configs+=("${overlays[@]}")
out=${OUT:-$out}
read -r -a smk_args <<< "${SMK_ARGS:-}"
read -r run rows seeds < <(.venv/bin/python -c 'import sys, yaml; c = {}
for f in sys.argv[1:]: c.update(yaml.safe_load(open(f)))
a = c.get("ablations", {})
from s2c.sections import WARMUP_ROW  # the shared warm-up, scored too
rows = ([WARMUP_ROW] if a.get("warmup") else []) + a.get("rows", ["baseline", "s2c"])
print(c["run"], ",".join(rows), ",".join(map(str, a.get("seeds", [0]))))' "${configs[@]}")
seeds=${SEEDS:-${seeds//,/ }}
rows=${ROWS:-${rows//,/ }}
abl="results/${run}/ablations"
# one Snakemake call per seed, or one over every seed (ALL_SEEDS=1)
if [ "${ALL_SEEDS:-0}" = 1 ]; then batches=("$seeds"); else read -r -a batches <<< "$seeds"; fi
for batch in "${batches[@]}"; do
  targets=()
  for seed in $batch; do
    for row in $rows; do
      targets+=("${abl}/${row}/seed${seed}/metrics/cam_train.json")
    done
    for row in baseline s2c; do
      [[ " $rows " == *" $row "* ]] || continue
      targets+=("${abl}/${row}/seed${seed}/metrics/pseudo_train.json" "${abl}/${row}/seed${seed}/metrics/seg_val.json")
    done
  done
  # targets first: --configfile takes every word after it
  .venv/bin/snakemake "${targets[@]}" --cores "${CORES:-2}" --rerun-triggers mtime --keep-going "${smk_args[@]}" \
    --configfile "${configs[@]}" || echo "seeds ${batch}: some jobs failed (see the logs above); the table keeps what finished" >&2
done
runs=()
for seed in $seeds; do
  for row in $rows; do
    [ -f "${abl}/${row}/seed${seed}/metrics/cam_train.json" ] && runs+=("${abl}/${row}/seed${seed}")
  done
done
if [ ${#runs[@]} -eq 0 ]; then echo "no finished run in ${abl}: no table" >&2; exit 0; fi
mkdir -p bench/results
merge=()
[ -f "${out}.tsv" ] && merge=(--merge "${out}.tsv")
.venv/bin/s2c ablations --runs "${runs[@]}" --out "${out}.tsv" "${merge[@]}" \
  --command "${STAMP:-bash bench/coco_plus_table.sh $*}" | tee "${out}.txt"
