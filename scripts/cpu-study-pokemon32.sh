#!/usr/bin/env bash
# The 32 px emoji → Pokémon study on CPU (docs/results/study-pokemon32-cpu/): full, attention and a3ft
# with three adapter starts, two seeds, from the emoji source model. Resumable: rerun to continue.
# Options were fixed before any result was seen; the checkpoint of each run is chosen on the
# held-out loss (never on the reported cFID).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/a3ft}
OUT=${OUT:-studies/pokemon32-cpu}
[ -f data/pokemon-32/manifest.json ] || $BIN data fetch pokemon --size 32 --holdout 100 --out data/pokemon-32
$BIN study --model-config assets/demo-model.json --checkpoint assets/emoji32-source.safetensors \
  --data data/pokemon-32/train --holdout data/pokemon-32/holdout --out "$OUT" \
  --methods full,attention,a3ft --adapter-starts random,zero-scale,gate-bias:-4 --seeds 0,1 \
  --epochs "${EPOCHS:-10}" --batch-size 32 --eval-every 2 --select heldout-loss \
  --final-samples "${FINAL_SAMPLES:-500}" --final-respacing ddim25 \
  --title "emoji → Pokémon at 32 px, 2 CPU cores" --device "${DEVICE:-cpu}"
