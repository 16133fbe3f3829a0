#!/usr/bin/env bash
# fp32 against bf16 on the source model's pre-training, from the same point of the run: each
# precision resumes a copy of the newest checkpoint for STEPS steps with the same draws (every
# draw of step k derives from (seed, k)), ROUNDS times, interleaved (fp32, bf16, fp32, …), so a
# drift of the machine's speed hits both. Run it with the machine otherwise idle (stop the
# pre-training with kill -STOP first); it prints one markdown row per run and the means.
#
#   scripts/precision-pilot.sh            # STEPS=100 ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/a3ft}
ROOT=${ROOT:-pretrain/emoji-icons-32}
STEPS=${STEPS:-100}
ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

newest=$(ls "$ROOT"/run/checkpoints/step_*.safetensors 2>/dev/null | sort | tail -1 || true)
[ -n "$newest" ] || newest=$(ls "$ROOT"/resume/step_*.safetensors | sort | tail -1)
start=$((10#$(basename "$newest" .safetensors | sed 's/step_//')))
echo "from $(basename "$newest") (step $start), $STEPS steps of batch 64 per run, $ROUNDS rounds, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo
echo "| run | precision | images/s | mean loss | mean mse | wall s |"
echo "|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  for p in fp32 bf16; do
    d=$WORK/$p-$round
    mkdir -p "$d/checkpoints"
    cp "$ROOT/run/config.json" "$d/"
    cp "$newest" "$d/checkpoints/"
    # metrics up to the checkpoint, so the resume has its history (and drops nothing).
    python3 - "$ROOT/run/metrics.jsonl" "$d/metrics.jsonl" "$start" <<'EOF'
import json, sys
src, dst, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src) as f, open(dst, "w") as g:
    for line in f:
        if json.loads(line).get("step", 0) <= start:
            g.write(line)
EOF
    t0=$(date +%s.%N)
    OMP_WAIT_POLICY=passive $BIN train --resume "$d" --steps $((start + STEPS)) --precision "$p" --log-every 10 \
      --save-every 1000000 --sample-every 1000000 --device cpu > "$d/log" 2>&1
    t1=$(date +%s.%N)
    python3 - "$d/metrics.jsonl" "$start" "$p" "$round" "$t0" "$t1" <<'EOF'
import json, sys
path, start, p, r, t0, t1 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
recs = [json.loads(l) for l in open(path)]
recs = [x for x in recs if x.get("step", 0) > start and "images_per_sec" in x]
# The first interval holds the start-up (loading, the first step's allocations): left out.
speed = recs[1:] or recs
ips = sum(x["images_per_sec"] for x in speed) / len(speed)
loss = sum(x["loss"] for x in recs) / len(recs)
mse = sum(x["mse"] for x in recs) / len(recs)
print(f"| {r} | {p} | {ips:.1f} | {loss:.5f} | {mse:.5f} | {t1 - t0:.0f} |")
EOF
  done
done
