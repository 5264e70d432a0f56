#!/usr/bin/env bash
# Does the CPU seg schedule learn? DeepLabV3+ / EfficientNet-Lite0 trained on the coco-plus GT masks
# (the seg ceiling's labels) for a few epochs under several backbone learning rates, the rest of the
# seg section as config/coco_plus_cpu.yaml has it (head LR 0.1 in every row), each scored on the val
# split at the scale it trains at (0.5). Prints a table of val mIoU, the final training loss and the
# per-class IoUs above zero; writes it to bench/results/seg_lr.txt.
#
#   bash bench/seg_lr.sh                 # epochs 2, backbone LR 0.01 (the default) / 0.001 / 0.0001
#   EPOCHS=4 LRS="0.01 0.001" bash bench/seg_lr.sh
#   WORK=/tmp/seg_lr S2C=echo bash bench/seg_lr.sh   # print the stage commands only
#
# Every stage is the pipeline's own CLI (s2c gt_labels / train_seg / eval_seg); outputs under $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-$(cd ../shared/data/coco-plus 2>/dev/null && pwd || echo ../shared/data/coco-plus)}
WORK=${WORK:-results/bench_seg_lr}
EPOCHS=${EPOCHS:-2}
LRS=${LRS:-0.01 0.001 0.0001}
S2C=${S2C:-.venv/bin/s2c}
HEAD_LR=0.1
data="{\"kind\": \"coco\", \"root\": \"${ROOT}\", \"class_set\": \"voc20\"}"
mkdir -p "$WORK" bench/results
$S2C fetch_weights --weights-dir weights --efficientnet-lite0  # a no-op once present
[ -d "$WORK/gt_train" ] || $S2C gt_labels --data-cfg "$data" --split train --out "$WORK/gt_train"
rows=()
for lr in $LRS; do
  mult=$(python3 -c "print(round($HEAD_LR / $lr, 6))")
  out="$WORK/lr${lr}_e${EPOCHS}"
  cfg="{\"backbone\": \"efficientnet_lite0\", \"pretrained\": true, \"freeze_bn\": true, \"epochs\": ${EPOCHS}, \"batch_size\": 8, \"crop_size\": 256, \"scale_range\": [0.4, 0.6], \"num_workers\": 1, \"lr\": ${lr}, \"head_lr_mult\": ${mult}}"
  [ -f "$out/model.pt" ] || $S2C train_seg --data-cfg "$data" --split train --labels "$WORK/gt_train" --out "$out" \
    --cfg "$cfg" --weights-dir weights --device cpu
  [ -f "$out/val_s0.5.json" ] || $S2C eval_seg --model "$out/model.pt" --data-cfg "$data" --split val \
    --out-json "$out/val_s0.5.json" --cfg '{"scales": [0.5]}' --weights-dir weights --device cpu
  rows+=("$lr $out")
done
[ "$S2C" = echo ] && exit 0
{
  echo "# bash bench/seg_lr.sh (EPOCHS=${EPOCHS}) at $(git rev-parse --short HEAD); GT labels, head LR ${HEAD_LR}, val at scale 0.5"
  printf '%-12s %8s %10s  %s\n' backbone_lr "mIoU %" final_loss "IoU % > 0"
  for r in "${rows[@]}"; do
    set -- $r
    python3 - "$1" "$2" <<'EOF'
import csv, json, sys
lr, out = sys.argv[1], sys.argv[2]
m = json.load(open(f"{out}/val_s0.5.json"))
loss = list(csv.DictReader(open(f"{out}/losses.csv")))[-1]["loss"]
ious = ", ".join(f"{k} {v:.1f}" for k, v in m["iou"].items() if v)
print(f"{lr:<12} {m['miou']:8.2f} {float(loss):10.3f}  {ious}")
EOF
  done
} | tee bench/results/seg_lr.txt
