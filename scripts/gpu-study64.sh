#!/usr/bin/env bash
# One GPU window of the 64 px emoji → Pokémon study (docs/study-pokemon64.md), prepared to run as
# the device tool's single command. Resumable across windows: what a window finishes comes back
# small enough for the device tool (≤ 8 files of ≤ 16 MiB), and the next window goes on from it.
#
#   STAGE=pretrain scripts/gpu-study64.sh   # pre-train / continue the 64 px emoji source model
#   STAGE=study    scripts/gpu-study64.sh   # the study at the paper's settings
#
# Prepare here (the device machine reaches no network), then carry these paths:
#   target/release/a3ft
#   data/emoji-64     (a3ft data fetch emoji --size 64 --out data/emoji-64)
#   data/pokemon-64   (a3ft data fetch pokemon --size 64 --holdout 100 --out data/pokemon-64)
#   gpu-carry/        (earlier results to continue from: source64.safetensors, study/ …;
#                      the Inception weights as gpu-carry/inception.pt for cFID/KID)
# Environment: BUDGET (seconds of this window, default 540), DEVICE (cuda), TINY=1 (a CPU dry run
# at toy scale: the 32 px demo model, 2 epochs, to test the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${BUDGET:-540}
DEVICE=${DEVICE:-cuda}
STAGE=${STAGE:?STAGE=pretrain or STAGE=study}
BIN=${BIN:-target/release/a3ft}
FINAL=${OUT:-gpu-out}
CARRY=${CARRY:-gpu-carry}
WORK=$(mktemp -d)
if [ "$DEVICE" != cpu ]; then
  TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$WORK/card.txt"
fi
if [ "${TINY:-0}" = 1 ]; then
  SIZE=32; MODEL=assets/demo-model.json; EPOCHS=2; BATCH=8; EVAL_EVERY=1; FINAL_SAMPLES=8; RESP=ddim10; SEEDS=0,1
else
  SIZE=64; MODEL=assets/study64-model.json; EPOCHS=500; BATCH=128; EVAL_EVERY=25; FINAL_SAMPLES=${FINAL_SAMPLES:-2000}; RESP=ddim50; SEEDS=0,1
fi
DATA=data/pokemon-$SIZE
if [ "${TINY:-0}" = 1 ]; then
  # A few images, so the dry run takes minutes on a CPU.
  DATA=$WORK/tiny-data
  mkdir -p "$DATA/train" "$DATA/holdout"
  ls data/pokemon-32/train/*.png | head -16 | xargs -I{} cp {} "$DATA/train/"
  ls data/pokemon-32/holdout/*.png | head -8 | xargs -I{} cp {} "$DATA/holdout/"
fi
INCEPTION=$CARRY/inception.pt
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

case $STAGE in
pretrain)
  # A new run from the carried source weights (optimizer state does not fit the way back, so Adam
  # restarts each window; the EMA weights carry the progress).
  INIT=()
  [ -f "$CARRY/source64.safetensors" ] && INIT=(--checkpoint "$CARRY/source64.safetensors")
  minutes=$(python3 -c "print(round(max($(left) - 90, 30) / 60, 2))")
  $BIN train --model-config "$MODEL" "${INIT[@]}" --data "data/emoji-$SIZE/train" --method full \
    --out "$WORK/pretrain" --batch-size "$BATCH" --lr 2e-4 --ema 0.999 --steps 1000000 --flip \
    --precision "$([ "$DEVICE" = cpu ] && echo fp32 || echo bf16)" --time-limit "$minutes" \
    --log-every 50 --sample-every 100000 --device "$DEVICE" 2>&1 | tr '\r' '\n' | grep -v '^epoch' | tail -5
  $BIN export --run "$WORK/pretrain" --out "$WORK/source64.safetensors" --dtype f16
  $BIN sample --model-config "$MODEL" --checkpoint "$WORK/source64.safetensors" --num 64 --batch-size 64 \
    --respacing ddim50 --seed 0 --out "$WORK/samples" --device "$DEVICE" >/dev/null
  cp "$WORK/pretrain/metrics.jsonl" "$WORK/pretrain-metrics.jsonl"
  rm -rf "$WORK/pretrain" "$WORK/samples"/0*.png "$WORK/samples/samples.npz" "$WORK/tiny-data"
  ;;
study)
  SOURCE=$CARRY/source64.safetensors
  [ "${TINY:-0}" = 1 ] && SOURCE=assets/emoji32-source.safetensors
  [ -f "$SOURCE" ] || { echo "no source model at $SOURCE: run STAGE=pretrain first" >&2; exit 2; }
  mkdir -p "$WORK/study"
  [ -d "$CARRY/study" ] && cp -r "$CARRY/study/." "$WORK/study/"
  INC=()
  [ -f "$INCEPTION" ] && INC=(--inception "$INCEPTION")
  # The paper's settings: Adam 2e-4, batch 128, hybrid loss, T = 1000 cosine, no EMA, 500 epochs
  # with early stop on the held-out loss (chosen on held-out images, never on the reported cFID).
  timeout $(( $(left) - 60 )) $BIN study --model-config "$MODEL" --checkpoint "$SOURCE" \
    --data "$DATA/train" --holdout "$DATA/holdout" --out "$WORK/study" \
    --methods full,attention,a3ft --adapter-starts random,zero-scale --seeds "$SEEDS" \
    --epochs "$EPOCHS" --batch-size "$BATCH" --eval-every "$EVAL_EVERY" --select heldout-loss --early-stop 4 \
    --final-samples "$FINAL_SAMPLES" --final-respacing "$RESP" --precision "$([ "$DEVICE" = cpu ] && echo fp32 || echo bf16)" \
    --title "emoji → Pokémon at $SIZE px" "${INC[@]}" --device "$DEVICE" 2>&1 | tr '\r' '\n' | grep -v '^epoch' | tail -30
  # Finished runs come back without checkpoints (their final.json holds the result); an unfinished
  # run cannot (its optimizer state is too large) and starts again next window.
  rm -rf "$WORK/tiny-data"
  for run in "$WORK/study/runs"/*; do
    [ -d "$run" ] || continue
    if [ -f "$run/final.json" ]; then rm -rf "$run/checkpoints"; else rm -rf "$run"; fi
  done
  ;;
*) echo "STAGE must be pretrain or study" >&2; exit 2 ;;
esac
mkdir -p "$FINAL"
tar czf "$WORK.tgz" -C "$WORK" .
# The device tool brings back files of at most 16 MiB.
split -b 15M -d "$WORK.tgz" "$FINAL/results.tgz.part"
rm -rf "$WORK" "$WORK.tgz"
echo "stage $STAGE: $(( $(date +%s) - START ))s; results in $FINAL/results.tgz.part* (cat them, then tar xzf)"
