#!/usr/bin/env bash
# The one prepared script for a GPU window (see docs/results/performance.md):
#   1. scripts/gpu-bench.sh — a3ft vs PyTorch eager table (about 5 minutes on an H100);
#   2. with DEMO_FULL=1, `a3ft demo --budget full` on the GPU (the overfitting experiment);
#   3. with PRETRAIN=1, pre-train the demo source model with the time that is left of BUDGET seconds.
# The device tool returns only a few files, so everything is packed into $OUT/results.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${BUDGET:-540}
FINAL=${OUT:-gpu-out}
WORK=$(mktemp -d)
export OUT=$WORK
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$WORK/card.txt"
# Bounded so that whatever was measured is still packed when the window is short.
timeout $(( BUDGET - 40 )) scripts/gpu-bench.sh 2>&1 | tee "$WORK/gpu-bench.log"
if [ "${DEMO_FULL:-0}" = 1 ]; then
  target/release/a3ft demo --budget full --device cuda --out "$WORK/demo-full" 2>&1 | tr '\r' '\n' | grep -v '^epoch' | tail -20
  rm -rf "$WORK/demo-full/data" "$WORK/demo-full/runs"/*/checkpoints
fi
left=$(( BUDGET - ($(date +%s) - START) - 45 ))
if [ "${PRETRAIN:-0}" = 1 ] && [ "$left" -gt 60 ]; then
  minutes=$(python3 -c "print(round($left/60, 2))")
  OUT="$WORK/pretrain" scripts/pretrain-demo-source.sh cuda "$minutes" 2>&1 | tail -5 | tee "$WORK/pretrain.log"
fi
mkdir -p "$FINAL"
tar czf "$FINAL/results.tgz" --exclude='*.err' --exclude='data' -C "$WORK" .
rm -rf "$WORK"
echo "total wall time $(( $(date +%s) - START ))s; results in $FINAL/results.tgz"
