#!/usr/bin/env bash
# The long-training 32 px study on CPU (docs/results/study-pokemon32-long-cpu/): the emoji source
# fine-tuned on a 100-image Pokémon subset until `full` overfits, five methods, three seeds, each
# run's checkpoint chosen on the held-out loss. Resumable: rerun to continue.
#
# The subset: the 647 training images of `a3ft data fetch pokemon --size 32 --holdout 100`
# sorted by file name in natural order (the Pokédex number), then every 6.47th (index
# floor(i·647/100), i = 0..99). The 102 held-out images are the fetch's own.
# Epochs (80) were fixed on one pilot run of `full` (seed 0): its held-out loss was lowest
# near epoch 40 and rose from there (0.0703 → 0.0744 at epoch 90) while its training loss fell.
# METHODS=… narrows the arms and TITLE=… names the study, e.g. the rerun of the methods that add
# modules at their pilot-chosen rate: OUT=… METHODS=difffit,lora TITLE=… $0 --new-lr 1e-3
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/a3ft}
OUT=${OUT:-studies/pokemon32-long-cpu}
DATA=data/pokemon-32
[ -f $DATA/manifest.json ] || $BIN data fetch pokemon --size 32 --holdout 100 --out $DATA
SUBSET=data/pokemon-32-100/train
if [ ! -d $SUBSET ]; then
  mkdir -p $SUBSET.partial
  ls $DATA/train | sort -V | awk '{f[NR-1]=$0} END {for (i = 0; i < 100; i++) print f[int(i * NR / 100)]}' |
    while read -r f; do cp "$DATA/train/$f" $SUBSET.partial/; done
  mv $SUBSET.partial $SUBSET
fi
$BIN study --model-config assets/demo-model.json --checkpoint assets/emoji32-source.safetensors \
  --data $SUBSET --holdout $DATA/holdout --out "$OUT" \
  --methods "${METHODS:-full,attention,a3ft,difffit,lora}" --seeds 0,1,2 \
  --epochs "${EPOCHS:-80}" --batch-size 10 --eval-every 5 --select heldout-loss \
  --final-samples "${FINAL_SAMPLES:-300}" --final-respacing ddim25 \
  --title "${TITLE:-emoji → Pokémon at 32 px, 100 training images, 80 epochs, 2 CPU cores}" --device "${DEVICE:-cpu}" "$@"
