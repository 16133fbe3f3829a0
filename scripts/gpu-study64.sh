#!/usr/bin/env bash
# The 64 px emoji → Pokémon study in ONE GPU window (the device tool's single command): pre-train
# the 64 px emoji source model, then fine-tune it on Pokémon with every method and adapter start,
# two seeds side by side on the one GPU, and pack what comes back into ≤ 8 files of ≤ 16 MiB.
#
# Prepare here (the device machine reaches no network; what travels is ≤ 64 MiB), then run
# `scripts/gpu-study64.sh` there with these carried:
#   target/release/a3ft
#   gpu-carry/emoji64.npy.xz + emoji64-names.txt  (scripts/pack-images.py pack data/emoji-64/train …:
#                           the 7,572 emoji PNGs are 43 MB, one xz'd pixel array 14 MB)
#   gpu-carry/pokemon-64/   (a3ft data fetch pokemon --size 64 --holdout 100)
# The tracked tree travels too: on a checkout whose tests/fixtures and docs push it over 64 MiB,
# run from a branch without them (what the 2026-11-27 window did). The Inception weights (87 MB)
# cannot travel: the final evaluations keep their samples (eval/final_samples.npz), which come
# back; merge the seed folders (study.json with both seeds) and `a3ft study --report-only` here
# adds clean-FID/KID (docs/results/study-pokemon64-gpu/README.md).
#
# Environment: BUDGET (seconds for the whole window, default 540), PRETRAIN_SHARE (of the budget,
# default 0.38), DEVICE (cuda), TINY=1 (a CPU dry run at toy scale, to test this script);
# ARMS, STARTS, EPOCHS, ONE_PROCESS_PER_RUN, PACK_S (seconds kept for packing, default 40); with
# gpu-carry/source64.safetensors (an earlier window's source) pre-training is skipped and
# SOURCE_IPS (its pre-training img/s) sizes the epochs.
#
# 2026-11-27 (docs/results/study-pokemon64-gpu): the pre-training's EMA held 17% of its random start
# after 3.5 min and the source sampled noise; `train` now ramps the EMA rate up (--ema-warmup).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${BUDGET:-540}
DEVICE=${DEVICE:-cuda}
BIN=${BIN:-target/release/a3ft}
CARRY=${CARRY:-gpu-carry}
FINAL=${OUT:-gpu-out}
PY=${PYTHON:-python3}
W=$(mktemp -d)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$W/window.log"; }
mkdir -p "$FINAL"

if [ "$DEVICE" = cpu ]; then
  PREC=fp32
else
  PREC=bf16
  TORCH_LIB=$($PY -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$W/card.txt"
fi
if [ "${TINY:-0}" = 1 ]; then
  MODEL=assets/study64-model.json; BATCH=8; FINAL_SAMPLES=16; RESP=ddim10; SRC_RESP=ddim10; MAX_EPOCHS=4
else
  MODEL=assets/study64-model.json; BATCH=128; FINAL_SAMPLES=${FINAL_SAMPLES:-600}; RESP=ddim25; SRC_RESP=ddim50; MAX_EPOCHS=500
fi
POKEMON=$CARRY/pokemon-64
EMOJI=$W/emoji/train
if [ "${TINY:-0}" = 1 ]; then
  # Toy scale: the study model at half width, a few images.
  MODEL=$W/tiny-model.json
  $PY -c "import json; c=json.load(open('assets/study64-model.json')); c['num_channels']=32; json.dump(c, open('$MODEL','w'))"
  mkdir -p "$W/tiny-pokemon/train" "$W/tiny-pokemon/holdout"
  ls "$POKEMON"/train/*.png | head -24 | xargs -I{} cp {} "$W/tiny-pokemon/train/"
  ls "$POKEMON"/holdout/*.png | head -8 | xargs -I{} cp {} "$W/tiny-pokemon/holdout/"
  POKEMON=$W/tiny-pokemon
fi
cp "$MODEL" "$W/source64-model.json"

# 1. Pre-train the source on emoji (full, EMA 0.9995, flips); a fixed share of the window. A
# source that travelled (gpu-carry/source64.safetensors, from an earlier window) is used as it is.
if [ -f "$CARRY/source64.safetensors" ]; then
  log "source model from $CARRY/source64.safetensors (no pre-training)"
  cp "$CARRY/source64.safetensors" "$W/source64.safetensors"
  ips=${SOURCE_IPS:?SOURCE_IPS: the pre-training speed (img/s) of the carried source}
else
  log "unpacking emoji"
  LIMIT=()
  [ "${TINY:-0}" = 1 ] && LIMIT=(--limit 64)
  $PY scripts/pack-images.py unpack "$CARRY/emoji64.npy.xz" "$CARRY/emoji64-names.txt" "$EMOJI" "${LIMIT[@]}" >> "$W/window.log" 2>&1 \
    || { log "emoji unpack failed"; cat "$W/window.log"; exit 2; }
  pre_min=$($PY -c "print(round(max($(left) * ${PRETRAIN_SHARE:-0.38}, 20) / 60, 3))")
  log "pre-training for $pre_min min"
  $BIN train --model-config "$MODEL" --data "$EMOJI" --method full --out "$W/pretrain" \
    --batch-size "$BATCH" --lr 2e-4 --ema 0.9995 --steps 1000000 --time-limit "$pre_min" --flip \
    --precision "$PREC" --log-every 50 --save-every 1000000 --sample-every 1000000 --device "$DEVICE" \
    > "$W/pretrain.log" 2>&1
  log "pre-training exit $?: $(tail -1 "$W/pretrain/metrics.jsonl" 2>/dev/null)"
  $BIN export --run "$W/pretrain" --out "$W/source64.safetensors" --dtype f16 >> "$W/pretrain.log" 2>&1 \
    || { log "export failed"; tail -5 "$W/pretrain.log"; }
  $BIN sample --model-config "$MODEL" --checkpoint "$W/source64.safetensors" --num 64 --batch-size 64 \
    --respacing "$SRC_RESP" --seed 0 --out "$W/source-samples" --device "$DEVICE" >> "$W/pretrain.log" 2>&1 \
    || log "source samples failed"
  cp "$W/pretrain/metrics.jsonl" "$W/pretrain-metrics.jsonl" 2>/dev/null
  cp "$W/pretrain/config.json" "$W/pretrain-config.json" 2>/dev/null
  rm -rf "$W/pretrain" "$W/source-samples"/0*.png "$W/emoji"
  ips=$(tail -1 "$W/pretrain-metrics.jsonl" 2>/dev/null | $PY -c "import json,sys; print(json.loads(sys.stdin.read()).get('images_per_sec', 0))" 2>/dev/null || echo 0)
fi

# 2. The study: the paper's settings (Adam 2e-4, batch 128, hybrid loss, T = 1000 cosine, no EMA,
# early stop on the held-out loss); epochs sized from the pre-training's measured speed so that
# both seeds (one process each, side by side) finish inside the window.
ARMS=${ARMS:-full,attention,a3ft}
STARTS=${STARTS:-random,zero-scale,gate-bias:-4}
RUNS_PER_SEED=$(( $(echo "$ARMS" | tr ',' '\n' | grep -vc '^a3ft$\|^adapter$') + $(echo "$ARMS" | tr ',' '\n' | grep -c '^a3ft$\|^adapter$') * $(echo "$STARTS" | tr ',' '\n' | wc -l) ))
ntrain=$(ls "$POKEMON/train" | grep -c '\.png$')
# Per run: its share of what is left (minus packing), less ~25 s of start-up and final
# evaluation; the two seed processes share the GPU (each assumed to get 45% of one's speed).
epochs=$($PY -c "
left=$(left)-45; per=left/$RUNS_PER_SEED-25
e=int(max(per,1)*0.45*$ips/$ntrain)
e=max(2, min($MAX_EPOCHS, e))
print(e if e < 10 else e//5*5)")
epochs=${EPOCHS:-$epochs}
every=$(( epochs >= 6 ? epochs / 6 : 1 ))
log "study: $ntrain training images, source at $ips img/s -> $epochs epochs, evaluation every $every"
# One process per seed (all arms in turn), or with ONE_PROCESS_PER_RUN=1 one per (arm, seed), all
# on the GPU at once (a 16M model at batch 128 leaves most of an H200 idle; `a3ft study
# --report-only` over the merged runs makes the one report afterwards).
jobs=()
if [ "${ONE_PROCESS_PER_RUN:-0}" = 1 ]; then
  for arm in ${ARMS//,/ }; do for seed in 0 1; do jobs+=("$arm $seed $arm-s$seed"); done; done
else
  for seed in 0 1; do jobs+=("$ARMS $seed s$seed"); done
fi
if [ -f "$W/source64.safetensors" ]; then
  for job in "${jobs[@]}"; do
    read -r arms seed name <<< "$job"
    t=$(( $(left) - ${PACK_S:-40} ))
    if [ "$t" -lt 1 ]; then log "no time left for study-$name"; continue; fi
    timeout "$t" $BIN study --model-config "$MODEL" --checkpoint "$W/source64.safetensors" \
      --data "$POKEMON/train" --holdout "$POKEMON/holdout" --out "$W/study-$name" \
      --methods "$arms" --adapter-starts "$STARTS" --seeds "$seed" \
      --epochs "$epochs" --batch-size "$BATCH" --eval-every "$every" --select heldout-loss --early-stop 4 \
      --final-samples "$FINAL_SAMPLES" --final-respacing "$RESP" --precision "$PREC" \
      --title "emoji → Pokémon at 64 px (GPU)" --device "$DEVICE" > "$W/study-$name.log" 2>&1 &
  done
  wait
  log "study done: $(ls -d "$W"/study-*/runs/*/final.json 2>/dev/null | wc -l) runs finished"
fi

# 3. Pack: results (logs, reports, curves, grids; no checkpoints) / source weights / samples.
mkdir -p "$W/back"
for run in "$W"/study-*/runs/*; do
  [ -d "$run" ] || continue
  rm -rf "$run/checkpoints"
  [ -f "$run/eval/final_samples.npz" ] && mkdir -p "$W/back/samples/$(basename "$run")" \
    && mv "$run/eval/final_samples.npz" "$W/back/samples/$(basename "$run")/"
done
grep -h "" "$W"/study-*.log | tr '\r' '\n' | grep -v '^\(epoch\|sampling\)' | tail -60 >> "$W/window.log"
# Sample grids make this ~2 MB a run: split like the rest.
tar czf "$W.results.tgz" -C "$W" --exclude back --exclude source64.safetensors .
split -b 15M -d "$W.results.tgz" "$FINAL/results.tgz.part"; rm -f "$W.results.tgz"
[ ! -f "$CARRY/source64.safetensors" ] && [ -f "$W/source64.safetensors" ] && split -b 15M -d "$W/source64.safetensors" "$FINAL/source64.safetensors.part"
# Samples get what is left of the 64 MiB that comes back (keeping a margin), cut per run if needed.
used=$(du -cb "$FINAL"/* | tail -1 | cut -f1)
room=$(( 62 * 1024 * 1024 - used ))
if [ -d "$W/back/samples" ]; then
  $PY scripts/pack-images.py fit "$W/back/samples" "$room" "$W/samples.tar.xz" >> "$W/window.log" 2>&1 \
    && split -b 15M -d "$W/samples.tar.xz" "$FINAL/samples.tar.xz.part"
fi
log "window: $(( $(date +%s) - START ))s; back: $(ls "$FINAL" | tr '\n' ' ')"
cp "$W/window.log" "$FINAL/window.log"
rm -rf "$W"
