#!/usr/bin/env bash
# `make bench`: CPU throughput of a3ft's training step per method and of DDIM sampling, next to
# the plain PyTorch eager baseline (scripts/torch_baseline.py) run in the same script on the same
# machine. Small batches so it finishes in minutes on 2 cores; timings are noisy on shared machines.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/a3ft
PY=.venv/bin/python
BATCH=${BATCH:-16}
STEPS=${STEPS:-4}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
echo "CPU: $(lscpu | sed -n 's/Model name: *//p'), $(nproc) cores; torch $($PY -c 'import torch; print(torch.__version__)')"
echo
echo "Demo model (assets/demo-model.json, 1.8M params, 32 px), batch $BATCH, fp32:"
printf "%-10s %12s %12s %8s\n" method a3ft_img/s torch_img/s ratio
for m in full attention a3ft; do
  a=$($BIN bench train --model-config assets/demo-model.json --method $m --batch-size $BATCH --steps $STEPS --warmup 1 --device cpu --json | tail -1)
  t=$($PY scripts/torch_baseline.py train --preset demo32 --method $m --batch-size $BATCH --steps $STEPS --warmup 1 | tail -1)
  $PY -c "import json,sys; a=json.loads(sys.argv[1]); t=json.loads(sys.argv[2]); print(f\"{sys.argv[3]:<10} {a['images_per_sec']:12.2f} {t['images_per_sec']:12.2f} {a['images_per_sec']/t['images_per_sec']:7.2f}x\")" "$a" "$t" $m
done
echo
echo "ImageNet-64 preset (121M params), batch 4, fp32, 2 timed steps:"
printf "%-10s %12s %12s %8s\n" method a3ft_img/s torch_img/s ratio
for m in full attention a3ft; do
  a=$($BIN bench train --preset imagenet64 --method $m --batch-size 4 --steps 2 --warmup 1 --device cpu --json | tail -1)
  t=$($PY scripts/torch_baseline.py train --preset imagenet64 --method $m --batch-size 4 --steps 2 --warmup 1 | tail -1)
  $PY -c "import json,sys; a=json.loads(sys.argv[1]); t=json.loads(sys.argv[2]); print(f\"{sys.argv[3]:<10} {a['images_per_sec']:12.3f} {t['images_per_sec']:12.3f} {a['images_per_sec']/t['images_per_sec']:7.2f}x\")" "$a" "$t" $m
done
echo
# The peer a user would otherwise run: the official improved-diffusion code (MIT), from a checkout
# (never copied into this repository). Its step: scripts/official_bench.py. It has no adapter, so
# a3ft's a3ft step is set against its attention-only step (a3ft does strictly more work there).
PEER=${PEER:-../shared/peers/improved-diffusion}
PEER_BATCH=${PEER_BATCH:-4}
if [ -d "$PEER/improved_diffusion" ]; then
  precisions="fp32"
  if grep -qwE 'avx512_bf16|amx_bf16|bf16' /proc/cpuinfo 2>/dev/null; then
    precisions="fp32 bf16"
  else
    echo "(this CPU has no native bf16: bf16 is not compared; a3ft warns when asked for it)"
  fi
  echo "ImageNet-64 preset, batch $PEER_BATCH, against the official improved-diffusion code ($PEER), 2 timed steps:"
  printf "%-10s %-5s %12s %14s %8s\n" method prec a3ft_img/s official_img/s ratio
  for prec in $precisions; do
    for m in full attention a3ft; do
      om=$m; [ $m = a3ft ] && om=attention
      a=$($BIN bench train --preset imagenet64 --method $m --batch-size "$PEER_BATCH" --steps 2 --warmup 1 --precision $prec --device cpu --json | tail -1)
      o=$($PY scripts/official_bench.py --peer "$PEER" --preset imagenet64 --method $om --batch-size "$PEER_BATCH" --steps 2 --warmup 1 --precision $prec | tail -1) \
        || { echo "official code failed (above); column skipped"; break 2; }
      $PY -c "import json,sys; a=json.loads(sys.argv[1]); o=json.loads(sys.argv[2]); print(f\"{sys.argv[3]:<10} {sys.argv[4]:<5} {a['images_per_sec']:12.3f} {o['images_per_sec']:14.3f} {a['images_per_sec']/o['images_per_sec']:7.2f}x\")" "$a" "$o" $m $prec
    done
  done
else
  echo "official improved-diffusion code: no checkout at $PEER (git clone https://github.com/openai/improved-diffusion, then PEER=that folder make bench); column skipped"
fi
echo
echo "DDIM-50 sampling, demo model, batch 32:"
a=$($BIN bench sample --model-config assets/demo-model.json --batch-size 32 --respacing ddim50 --device cpu --json)
echo "a3ft: $a"
