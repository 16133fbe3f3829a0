#!/usr/bin/env bash
# The one prepared script for a GPU window: benchmark table, then pre-train the demo source
# model with whatever time is left of BUDGET seconds. Everything lands in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${BUDGET:-540}
export OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/card.txt"
scripts/gpu-bench.sh 2>&1 | tee "$OUT/gpu-bench.log"
left=$(( BUDGET - ($(date +%s) - START) - 45 ))
echo "seconds left for pre-training: $left"
if [ "$left" -gt 60 ]; then
  minutes=$(python3 -c "print(round($left/60, 2))")
  OUT="$OUT/pretrain" scripts/pretrain-demo-source.sh cuda "$minutes" 2>&1 | tail -5 | tee "$OUT/pretrain.log"
fi
echo "total wall time $(( $(date +%s) - START ))s"
