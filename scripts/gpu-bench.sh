#!/usr/bin/env bash
# GPU benchmark: a3ft (release binary built elsewhere) vs a plain PyTorch eager implementation
# of the same model and step (scripts/torch_baseline.py), the official improved-diffusion code
# (scripts/official_bench.py, from a carried checkout: PEER, default gpu-carry/improved-diffusion)
# and the PyTorch baseline under torch.compile (COMPILE_MODES, default "default
# max-autotune-no-cudagraphs"; COMPILE_METHODS, default all three; each run bounded by
# COMPILE_TIMEOUT s), same card, same run, with MFU from PyTorch's FLOP counter. In a 10-minute
# window: COMPILE_METHODS=full (max-autotune alone can take minutes per configuration).
#
#   scripts/gpu-bench.sh            # writes $OUT (or ./gpu-bench-out)/gpu-bench.md and raw.jsonl
#
# Needs: target/release/a3ft, python3 with torch (the binary runs against that torch's libtorch),
# nvidia-smi. Every configuration runs in its own process; peak GPU memory is the maximum of
# nvidia-smi's memory.used during that process minus the idle value (both implementations
# measured the same way, so caching-allocator overhead counts for both).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-gpu-bench-out}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
BIN=${BIN:-target/release/a3ft}
BATCH=${BATCH:-128}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-8}
WARMUP=${WARMUP:-3}
TORCH_LIB=$($PY -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
RAW="$OUT_DIR/raw.jsonl"
: > "$RAW"

card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
echo "card: $card; torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda)'); idle memory $idle MiB"

# Runs "$@" while sampling GPU memory; appends its JSON line (plus peak_gpu_mib and label) to raw.jsonl.
measure() {
  local label=$1; shift
  local mem="$OUT_DIR/mem.$$"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$mem" 2>/dev/null &
  local smi=$!
  local line
  line=$("$@" 2> "$OUT_DIR/$label.err" | grep '^{' | tail -1)
  local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  local peak
  peak=$(sort -n "$mem" | tail -1)
  rm -f "$mem"
  if [ -z "$line" ]; then
    echo "FAILED: $label (see $OUT_DIR/$label.err)"; tail -3 "$OUT_DIR/$label.err"
    return
  fi
  echo "$line" | $PY -c "import json,sys; d=json.loads(sys.stdin.read()); d['label']='$label'; d['peak_gpu_mib']=int('${peak:-0}')-int('$idle'); print(json.dumps(d))" >> "$RAW"
  tail -1 "$RAW"
}

# 0. The CUDA path computes what the official code computes (golden fixture on the GPU).
d=tests/fixtures/iddpm-tiny
if $BIN debug step --model-config $d/config.json --checkpoint $d/model.pt --x0 $d/x0.npy --t $d/t.npy \
     --noise $d/noise.npy --out "$OUT_DIR/parity-cuda.npz" --device $DEVICE 2> "$OUT_DIR/parity.err"; then
  $PY - "$OUT_DIR/parity-cuda.npz" $d/expected.npz <<'EOF' | tee "$OUT_DIR/parity.txt"
import sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
worst = max((float(np.abs(a[k] - b[k]).max()) / (1e-4 + 1e-4 * float(np.abs(b[k]).max())), k) for k in b.files)
print(f"cuda parity vs official fixture: worst error/tolerance {worst[0]:.3f} ({worst[1]}) -> {'OK' if worst[0] <= 1 else 'FAIL'}")
EOF
else
  echo "cuda debug step failed:"; tail -5 "$OUT_DIR/parity.err"
fi

# 1. train / resume / sample on the device with a small model (functional check).
$PY - "$OUT_DIR/data" <<'EOF'
import os, struct, sys, zlib
import numpy as np
os.makedirs(sys.argv[1], exist_ok=True)
def png(path, a):
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
rng = np.random.default_rng(0)
for i in range(8):
    a = np.zeros((16, 16, 3), np.uint8); a[..., i % 3] = 200; a[4:12, 4:12] = rng.integers(0, 255, 3)
    png(os.path.join(sys.argv[1], f"{i}.png"), a)
EOF
v=tests/fixtures/variants
rm -rf "$OUT_DIR/run"
if $BIN train --model-config $v/config.json --checkpoint $v/plain.pt --data "$OUT_DIR/data" --method a3ft \
     --out "$OUT_DIR/run" --batch-size 8 --steps 10 --precision bf16 --sample-every 10 --device $DEVICE 2> "$OUT_DIR/train.err" \
   && $BIN train --resume "$OUT_DIR/run" --steps 20 --device $DEVICE 2>> "$OUT_DIR/train.err" \
   && $BIN sample --run "$OUT_DIR/run" --num 8 --batch-size 8 --respacing ddim10 --ddim --out "$OUT_DIR/samples" --force \
        --device $DEVICE 2>> "$OUT_DIR/train.err"; then
  echo "train/resume/sample on $DEVICE: OK ($(wc -l < "$OUT_DIR/run/metrics.jsonl") metric lines)"
else
  echo "train/resume/sample on $DEVICE FAILED:"; tail -5 "$OUT_DIR/train.err"
fi

for prec in bf16 fp32; do
  for m in full attention a3ft; do
    measure "a3ft-$m-$prec" $BIN bench train --preset imagenet64 --method $m --batch-size $BATCH \
      --steps $STEPS --warmup $WARMUP --precision $prec --device $DEVICE --json
    measure "torch-$m-$prec" $PY scripts/torch_baseline.py train --preset imagenet64 --method $m \
      --batch-size $BATCH --steps $STEPS --warmup $WARMUP --precision $prec --device $DEVICE
  done
done
# PyTorch with fused attention (F.scaled_dot_product_attention), the strongest plain baseline.
for m in full attention a3ft; do
  measure "torchsdpa-$m-bf16" $PY scripts/torch_baseline.py train --preset imagenet64 --method $m \
    --batch-size $BATCH --steps $STEPS --warmup $WARMUP --precision bf16 --device $DEVICE --sdpa
done
# Channels-last variants (bf16, full) for both implementations: CL=1 (slower for both on an H100).
if [ "${CL:-0}" = 1 ]; then
  measure "a3ft-full-bf16-cl" env A3FT_CHANNELS_LAST=1 $BIN bench train --preset imagenet64 --method full \
    --batch-size $BATCH --steps $STEPS --warmup $WARMUP --precision bf16 --device $DEVICE --json
  measure "torch-full-bf16-cl" $PY scripts/torch_baseline.py train --preset imagenet64 --method full \
    --batch-size $BATCH --steps $STEPS --warmup $WARMUP --precision bf16 --device $DEVICE --channels-last
fi
for prec in bf16 fp32; do
  measure "a3ft-ddim50-$prec" $BIN bench sample --preset imagenet64 --batch-size $BATCH --respacing ddim50 \
    --precision $prec --device $DEVICE --json
  measure "torch-ddim50-$prec" $PY scripts/torch_baseline.py sample --preset imagenet64 --batch-size $BATCH \
    --respacing ddim50 --precision $prec --device $DEVICE
done
measure "torchsdpa-ddim50-bf16" $PY scripts/torch_baseline.py sample --preset imagenet64 --batch-size $BATCH \
  --respacing ddim50 --precision bf16 --device $DEVICE --sdpa

# The peers a user would otherwise run. (a) The official improved-diffusion code, from a checkout
# carried to the machine (PEER; ../shared does not travel): full and attention-only, fp32 and
# autocast bf16; a3ft's a3ft step is set against its attention step (it has no adapter).
PEER=${PEER:-gpu-carry/improved-diffusion}
if [ -f "$PEER/improved_diffusion/script_util.py" ]; then
  for prec in bf16 fp32; do
    for m in full attention; do
      measure "official-$m-$prec" $PY scripts/official_bench.py --peer "$PEER" --preset imagenet64 --method $m \
        --batch-size $BATCH --steps $STEPS --warmup $WARMUP --precision $prec --device $DEVICE
    done
  done
else
  echo "official code: no checkout at $PEER (copy ../shared/peers/improved-diffusion there and carry it); skipped"
fi
# (b) The PyTorch baseline under torch.compile, bf16; compile time (the warm-up) reported apart.
# Each run is bounded: max-autotune can take many minutes per configuration.
for mode in ${COMPILE_MODES-default max-autotune-no-cudagraphs}; do
  for m in ${COMPILE_METHODS-full attention a3ft}; do
    measure "torchcompile-$mode-$m-bf16" timeout "${COMPILE_TIMEOUT:-420}" $PY scripts/torch_baseline.py train \
      --preset imagenet64 --method $m --batch-size $BATCH --steps $STEPS --warmup $WARMUP --precision bf16 \
      --device $DEVICE --compile $mode
  done
done
# FLOPs per image of a training step (forward + backward), PyTorch's analytic counter, for MFU.
FLOPS="$OUT_DIR/flops.jsonl"
: > "$FLOPS"
for m in full attention a3ft; do
  $PY scripts/torch_baseline.py train --preset imagenet64 --method $m --batch-size 1 --count-flops --device cpu \
    2>/dev/null | grep '^{' >> "$FLOPS"
done

$PY - "$RAW" "$card" "$FLOPS" <<'EOF' | tee "$OUT_DIR/gpu-bench.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
flops = {r["method"]: r["flops_per_image"] for r in (json.loads(l) for l in open(sys.argv[3]) if l.strip())}
by = {r["label"]: r for r in rows}
print(f"Card: {sys.argv[2]}. ImageNet-64 preset (121M params, random weights), batch {rows[0].get('batch_size', '?') if rows else '?'}.\n")
print("| step | precision | a3ft img/s | PyTorch img/s | a3ft / PyTorch | PyTorch+SDPA img/s | a3ft / PyTorch+SDPA | a3ft peak GPU MiB | PyTorch peak GPU MiB | PyTorch+SDPA peak GPU MiB |")
print("|---|---|---|---|---|---|---|---|---|---|")
def line(name, prec, a, t, s=None):
    ra, rt, rs = by.get(a), by.get(t), (by.get(s) if s else None)
    ips = lambda r: f"{r['images_per_sec']:.1f}" if r else "failed"
    ratio = lambda r: f"{ra['images_per_sec'] / r['images_per_sec']:.2f}×" if ra and r else "-"
    mem = lambda r: str(r.get("peak_gpu_mib", "-")) if r else "-"
    sd = (ips(rs), ratio(rs), mem(rs)) if s else ("-", "-", "-")
    print(f"| {name} | {prec} | {ips(ra)} | {ips(rt)} | {ratio(rt)} | {sd[0]} | {sd[1]} | {mem(ra)} | {mem(rt)} | {sd[2]} |")
for prec in ["bf16", "fp32"]:
    for m in ["full", "attention", "a3ft"]:
        line(f"train {m}", prec, f"a3ft-{m}-{prec}", f"torch-{m}-{prec}", f"torchsdpa-{m}-bf16" if prec == "bf16" else None)
if "a3ft-full-bf16-cl" in by:
    line("train full, channels-last", "bf16", "a3ft-full-bf16-cl", "torch-full-bf16-cl")
for prec in ["bf16", "fp32"]:
    line("DDIM-50 sampling", prec, f"a3ft-ddim50-{prec}", f"torch-ddim50-{prec}", "torchsdpa-ddim50-bf16" if prec == "bf16" else None)
# Peers: the official code and torch.compile, with MFU (dense bf16 peak of the card).
# Dense bf16 peaks: H100 PCIe 756 TFLOP/s, H100 SXM/HBM3 and H200 989.4.
peak = 756e12 if "H100 PCIe" in sys.argv[2] else 989.4e12 if any(k in sys.argv[2] for k in ("H100", "H200")) else None
print("\n| step (bf16) | a3ft img/s | a3ft MFU | official img/s | a3ft / official | compile img/s | a3ft / compile | compile s | max-autotune img/s | a3ft / max-autotune | max-autotune compile s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for m in ["full", "attention", "a3ft"]:
    a = by.get(f"a3ft-{m}-bf16")
    o = by.get(f"official-{'attention' if m == 'a3ft' else m}-bf16")
    c = by.get(f"torchcompile-default-{m}-bf16")
    x = by.get(f"torchcompile-max-autotune-no-cudagraphs-{m}-bf16")
    ips = lambda r: f"{r['images_per_sec']:.1f}" if r else "-"
    ratio = lambda r: f"{a['images_per_sec'] / r['images_per_sec']:.2f}×" if a and r else "-"
    comp = lambda r: f"{r['compile_seconds']:.0f}" if r and "compile_seconds" in r else "-"
    mfu = f"{100 * a['images_per_sec'] * flops[m] / peak:.1f}%" if a and peak and m in flops else "-"
    print(f"| train {m} | {ips(a)} | {mfu} | {ips(o)} | {ratio(o)} | {ips(c)} | {ratio(c)} | {comp(c)} | {ips(x)} | {ratio(x)} | {comp(x)} |")
print("\nFLOPs per image of a training step (torch.utils.flop_counter): " + ", ".join(f"{m} {v / 1e9:.1f} G" for m, v in flops.items())
      + (f"; MFU against {peak / 1e12:.1f} TFLOP/s dense bf16." if peak else "; MFU not computed (unknown card)."))
EOF
