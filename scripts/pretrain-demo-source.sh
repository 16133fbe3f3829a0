#!/usr/bin/env bash
# Reproduces the demo's pre-trained source model (assets/demo-source.safetensors):
# a3ft pre-trains the 1.8M-parameter UNet of assets/demo-model.json from scratch on 20,000
# synthetic source-domain images (shapes and textures), then exports the EMA weights.
#
#   scripts/pretrain-demo-source.sh [DEVICE] [MINUTES]     # defaults: auto, 240 (CPU: hours)
#
# Output folder: $OUT (or ./pretrain-out): run/ (metrics, samples, checkpoint),
# demo-source.safetensors, samples/ (64 DDIM-50 samples of the result).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-auto}
MINUTES=${2:-240}
OUT_DIR=${OUT:-pretrain-out}
BIN=${BIN:-target/release/a3ft}
mkdir -p "$OUT_DIR"
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
$BIN data synth --domain source --num 20000 --size 32 --seed 1 --out "$data"
rm -rf "$OUT_DIR/run"
$BIN train --model-config assets/demo-model.json --data "$data" --method full --out "$OUT_DIR/run" \
  --batch-size 256 --lr 2e-4 --ema 0.999 --steps 200000 --time-limit "$MINUTES" --flip \
  --log-every 200 --sample-every 2000 --sample-respacing 50 --sample-count 36 --device "$DEVICE"
$BIN export --run "$OUT_DIR/run" --out "$OUT_DIR/demo-source.safetensors" --force
$BIN sample --model-config assets/demo-model.json --checkpoint "$OUT_DIR/demo-source.safetensors" --num 64 \
  --batch-size 64 --respacing 100 --seed 0 --out "$OUT_DIR/samples" --force --device "$DEVICE"
tail -1 "$OUT_DIR/run/metrics.jsonl"
