#!/usr/bin/env bash
# Pre-trains a source model on emoji (a3ft data fetch emoji), resumable across sessions:
# rerun the same command to continue where the time limit stopped it.
#
#   scripts/pretrain-emoji-source.sh 32 [DEVICE] [MINUTES]   # the demo source (assets/demo-model.json, 1.8M)
#   scripts/pretrain-emoji-source.sh 64 [DEVICE] [MINUTES]   # the 64 px study source (assets/study64-model.json, 16.0M)
#
# Output folder $OUT (default pretrain-emoji-SIZE): run/ (config, metrics, checkpoints, sample
# grids), source.safetensors (EMA weights in f16, as `a3ft export --dtype f16` writes them), samples/ (64 DDIM-50
# samples of it). Environment: BIN (a3ft binary), BATCH, LR, EMA, STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:?size: 32 or 64}
DEVICE=${2:-auto}
MINUTES=${3:-60}
BIN=${BIN:-target/release/a3ft}
OUT_DIR=${OUT:-pretrain-emoji-$SIZE}
case $SIZE in
  32) MODEL=assets/demo-model.json; BATCH=${BATCH:-64}; LR=${LR:-5e-4}; EMA=${EMA:-0.99}; STEPS=${STEPS:-200000} ;;
  64) MODEL=assets/study64-model.json; BATCH=${BATCH:-128}; LR=${LR:-2e-4}; EMA=${EMA:-0.999}; STEPS=${STEPS:-200000} ;;
  *) echo "size must be 32 or 64" >&2; exit 2 ;;
esac
DATA=${DATA:-data/emoji-$SIZE}
mkdir -p "$OUT_DIR"
[ -f "$DATA/manifest.json" ] || $BIN data fetch emoji --size "$SIZE" --out "$DATA"
status=0
if [ -f "$OUT_DIR/run/config.json" ]; then
  $BIN train --resume "$OUT_DIR/run" --time-limit "$MINUTES" --device "$DEVICE" || status=$?
else
  $BIN train --model-config "$MODEL" --data "$DATA/train" --method full --out "$OUT_DIR/run" \
    --batch-size "$BATCH" --lr "$LR" --ema "$EMA" --steps "$STEPS" --time-limit "$MINUTES" --flip \
    --log-every 20 --save-every 500 --sample-every 500 --sample-respacing ddim50 --sample-count 36 \
    --device "$DEVICE" || status=$?
fi
# A signal (exit 128+n) still saved a checkpoint: export what there is, then pass the status on.
$BIN export --run "$OUT_DIR/run" --out "$OUT_DIR/source.safetensors" --dtype f16 --force
$BIN sample --model-config "$MODEL" --checkpoint "$OUT_DIR/source.safetensors" --num 64 --batch-size 64 \
  --respacing ddim50 --ddim --seed 0 --out "$OUT_DIR/samples" --force --device "$DEVICE"
tail -1 "$OUT_DIR/run/metrics.jsonl"
exit $status
