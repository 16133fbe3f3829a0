#!/usr/bin/env bash
# Pre-trains the broad 32 px source model on `a3ft data fetch emoji-icons` (24,315 emoji, icons,
# logos and flags of 12 designs), over as many sessions as it takes. Rerun the same command to
# continue: it resumes bitwise from the newest checkpoint.
#
#   scripts/pretrain-source.sh [MINUTES]     # train for MINUTES (default 60), then park
#   scripts/pretrain-source.sh park          # park only (after a run was stopped by hand)
#
# Parking makes the run survive a fresh clone: the newest checkpoint (weights, Adam moments,
# EMA) goes to $ROOT/resume/, every milestone step's EMA weights (each MILESTONE steps) are
# exported in f16 to $ROOT/milestones/, and older checkpoints are dropped. $ROOT/run/ minus its
# checkpoints/ (config, metrics, sample grids) is tracked with them; a clone that lacks
# run/checkpoints/ gets the parked one back before training resumes.
#
# The recipe (docs/results/source-emoji-icons32/README.md says how each part was chosen):
# the 1.8M-parameter UNet of assets/demo-model.json, --method full from random weights, Adam
# lr 1e-3 constant, batch 64, bf16 mixed precision, EMA 0.9995 (ramped), random flips,
# T = 1000 cosine, 40,000 steps (2.56M images seen).
#
# Environment: BIN (a3ft binary), DEVICE (default cpu), NICE (default 19: the run yields the
# CPU to anything else), ROOT (default pretrain/emoji-icons-32), PRECISION (on resume: fp32 or
# bf16, default the run's own; bf16 pays only on a CPU with native bf16 — avx512_bf16/amx_bf16 —
# and is emulated, several times slower, elsewhere, so a session on such a machine sets fp32).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/a3ft}
DEVICE=${DEVICE:-cpu}
NICE=${NICE:-19}
ROOT=${ROOT:-pretrain/emoji-icons-32}
DATA=data/emoji-icons-32
RUN=$ROOT/run
MODEL=assets/demo-model.json
MILESTONE=4000   # steps: 256,000 images at batch 64
STEPS=40000
MODE=${1:-60}

# The data are a pure function of the pinned packages: a fresh clone fetches the same bytes
# (train --resume checks them against the run's fingerprint).
[ -f "$DATA/manifest.json" ] || $BIN data fetch emoji-icons --size 32 --holdout 1000 --out "$DATA"

newest() { ls "$RUN/checkpoints"/step_*.safetensors 2>/dev/null | sort | tail -1; }

park() {
  local last step
  last=$(newest)
  [ -n "$last" ] || { echo "park: no checkpoint in $RUN/checkpoints" >&2; return 1; }
  mkdir -p "$ROOT/milestones" "$ROOT/resume"
  for ck in "$RUN/checkpoints"/step_*.safetensors; do
    step=$((10#$(basename "$ck" .safetensors | sed 's/step_//')))
    if [ $((step % MILESTONE)) -eq 0 ] && [ ! -f "$ROOT/milestones/step_$(printf %06d $step).safetensors" ]; then
      $BIN export --run "$RUN" --step "$step" --out "$ROOT/milestones/step_$(printf %06d $step).safetensors" --dtype f16
    fi
  done
  # The new parked copy is whole before the old one goes.
  cp "$last" "$ROOT/resume/.incoming"
  mv "$ROOT/resume/.incoming" "$ROOT/resume/$(basename "$last")"
  for old in "$ROOT/resume"/step_*.safetensors; do
    [ "$(basename "$old")" = "$(basename "$last")" ] || rm -f "$old"
  done
  for ck in "$RUN/checkpoints"/step_*.safetensors; do
    [ "$ck" = "$last" ] || rm -f "$ck"
  done
  echo "parked $(basename "$last") in $ROOT/resume; milestones: $(ls "$ROOT/milestones" | wc -l)"
}

if [ "$MODE" = park ]; then
  park
  exit
fi

status=0
if [ -f "$RUN/config.json" ]; then
  if [ -z "$(newest)" ]; then
    mkdir -p "$RUN/checkpoints"
    cp "$ROOT"/resume/step_*.safetensors "$RUN/checkpoints/"
  fi
  OMP_WAIT_POLICY=passive nice -n "$NICE" $BIN train --resume "$RUN" --time-limit "$MODE" --device "$DEVICE" \
    ${PRECISION:+--precision "$PRECISION"} || status=$?
else
  mkdir -p "$ROOT"
  OMP_WAIT_POLICY=passive nice -n "$NICE" $BIN train --model-config "$MODEL" --data "$DATA/train" --method full --out "$RUN" \
    --batch-size 64 --lr 1e-3 --ema 0.9995 --ema-warmup true --precision bf16 --steps "$STEPS" --flip --seed 0 \
    --log-every 50 --save-every 500 --sample-every 2000 --sample-respacing ddim50 --sample-count 36 \
    --time-limit "$MODE" --device "$DEVICE" || status=$?
fi
# A signal (exit 128+n) still saved a checkpoint: park what there is, then pass the status on.
park
tail -1 "$RUN/metrics.jsonl"
exit $status
