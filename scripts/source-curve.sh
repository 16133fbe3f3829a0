#!/usr/bin/env bash
# The source model's quality curve: today's emoji source (assets/emoji32-source.safetensors)
# and every parked milestone of scripts/pretrain-source.sh, each measured the same way:
#   - 1,000 DDIM-50 samples (seed 0) → clean-FID and KID against 5,000 training images of
#     emoji-icons (a fixed subset: the names whose SHA-256 of "a3ft-source-ref/NAME" sorts
#     first) and against the 1,008 held-out images;
#   - held-out loss and bits/dim on the held-out images (10-point timestep grid, seed 0);
#   - a grid of 64 DDIM-50 samples (seed 0).
# Each model's line goes to $ROOT/curve.jsonl once (keyed by the file's SHA-256); rerun it after
# each session and only the new milestones are measured. Grids go to $ROOT/grids/.
#
#   scripts/source-curve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/a3ft}
DEVICE=${DEVICE:-cpu}
ROOT=${ROOT:-pretrain/emoji-icons-32}
DATA=data/emoji-icons-32
REF=data/emoji-icons-32-ref5k
MODEL=assets/demo-model.json
CURVE=$ROOT/curve.jsonl
mkdir -p "$ROOT/grids"
touch "$CURVE"

[ -f "$DATA/manifest.json" ] || $BIN data fetch emoji-icons --size 32 --holdout 1000 --out "$DATA"
if [ ! -d "$REF" ]; then
  rm -rf "$REF.tmp" && mkdir -p "$REF.tmp"
  python3 - "$DATA/train" "$REF.tmp" <<'EOF'
import hashlib, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
names = sorted(os.listdir(src), key=lambda n: hashlib.sha256(f"a3ft-source-ref/{n}".encode()).hexdigest())
for n in names[:5000]:
    shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
EOF
  mv "$REF.tmp" "$REF"
fi

measure() { # NAME FILE IMAGES_SEEN
  local name=$1 file=$2 seen=$3 sha
  sha=$(sha256sum "$file" | cut -d' ' -f1)
  grep -q "\"sha256\":\"$sha\"" "$CURVE" && return 0
  echo "measuring $name ($file)" >&2
  local start; start=$(date +%s)
  local res
  res=$($BIN eval --checkpoint "$file" --model-config "$MODEL" --reference "$REF" --holdout "$DATA/holdout" \
    --num-samples 1000 --respacing ddim50 --seed 0 --json --device "$DEVICE")
  $BIN sample --checkpoint "$file" --model-config "$MODEL" --num 64 --batch-size 64 --respacing ddim50 --seed 0 \
    --out "$ROOT/grids/.tmp-$name" --force --device "$DEVICE" >/dev/null
  mv "$ROOT/grids/.tmp-$name/grid.png" "$ROOT/grids/$name.png"
  rm -rf "$ROOT/grids/.tmp-$name"
  python3 - "$name" "$file" "$sha" "$seen" "$(( $(date +%s) - start ))" "$res" >>"$CURVE" <<'EOF'
import json, sys
name, file, sha, seen, secs, res = sys.argv[1:]
r = json.loads(res)
print(json.dumps({"model": name, "file": file, "sha256": sha, "images_seen": int(seen),
                  "fid_train5k": r["fid"], "kid_train5k": r["kid"],
                  "fid_heldout": r["heldout"]["fid"], "kid_heldout": r["heldout"]["kid"],
                  "heldout_loss": r["heldout"]["loss"], "heldout_mse": r["heldout"]["mse"], "heldout_bpd": r["heldout"]["bpd"],
                  "memorization_median": r["memorization"]["median_distance"], "seconds": int(secs)}, separators=(",", ":")))
EOF
}

# Today's source: 2,399 steps of batch 64 on the emoji set (docs/results/emoji32-source).
measure emoji32-source assets/emoji32-source.safetensors 153536
for m in "$ROOT"/milestones/step_*.safetensors; do
  [ -f "$m" ] || continue
  step=$((10#$(basename "$m" .safetensors | sed 's/step_//')))
  measure "step_$(printf %06d $step)" "$m" $((step * 64))
done
cat "$CURVE"
