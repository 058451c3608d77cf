#!/usr/bin/env bash
# Sets everything up (idempotent), then runs the whole NTT chain on real images and prints COCO metrics:
# references from a COCO train split -> memory bank -> instance masks on the val split -> bbox/segm AP.
#
#   bash scripts/demo.sh                    # real weights (see README: where checkpoints go)
#   bash scripts/demo.sh --random-weights   # smoke run without weights (metrics ~0: models are random)
#
# Data: $NTT_DEMO_DATA (a COCO folder with annotations/instances_{train,val}2017.json and
# images/{train,val}2017/), else ../shared/data/coco128-seg when present, else a small COCO subset
# downloaded through FiftyOne's dataset zoo. Extra arguments go to every ntt command.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
NTT=".venv/bin/ntt"
OUT="${NTT_DEMO_OUT:-$ROOT/out/demo}"
mkdir -p "$OUT"

DATA="${NTT_DEMO_DATA:-}"
if [[ -z "$DATA" && -d "$ROOT/../shared/data/coco128-seg" ]]; then DATA="$ROOT/../shared/data/coco128-seg"; fi
if [[ -z "$DATA" ]]; then
  DATA="$OUT/coco-subset"
  .venv/bin/python scripts/demo_data.py "$DATA"
fi

HAS_CUDA=$(.venv/bin/python -c "import torch; print(int(torch.cuda.is_available()))")
ARGS=("$@")
if [[ " ${ARGS[*]-} " != *" --preset "* ]]; then
  if [[ "$HAS_CUDA" == 1 ]]; then PRESET=paper
  elif [[ " ${ARGS[*]-} " == *" --random-weights "* ]]; then PRESET=smoke  # random models: just prove the chain
  else PRESET=lite; fi
  ARGS+=(--preset "$PRESET")
fi
# On a CPU, segment a few images only (the paper preset takes minutes per image there).
MAX_IMAGES="${NTT_DEMO_MAX_IMAGES:-$([[ "$HAS_CUDA" == 1 ]] && echo 100000 || echo 10)}"
SHOTS="${NTT_DEMO_SHOTS:-5}"

echo "== data: $DATA; options: ${ARGS[*]}; max images: $MAX_IMAGES"
$NTT weights "${ARGS[@]}"  # every checkpoint the demo needs, named at once when missing
echo "== 1/3 memory bank from $SHOTS shots per class (paper sampling protocol, seed 33)"
$NTT bank build "$DATA/annotations/instances_train2017.json" --images "$DATA/images/train2017" \
  --shots "$SHOTS" -o "$OUT/bank.safetensors" "${ARGS[@]}"
$NTT bank info "$OUT/bank.safetensors" > "$OUT/bank_info.json"  # not piped into head: under pipefail, its early exit
head -4 "$OUT/bank_info.json"                                   # could fail the demo (SIGPIPE)
echo "== 2/3 segmenting targets"
$NTT segment --bank "$OUT/bank.safetensors" --images "$DATA/annotations/instances_val2017.json" \
  --image-root "$DATA/images/val2017" --max-images "$MAX_IMAGES" -o "$OUT/preds.json" "${ARGS[@]}"
echo "== 3/3 COCO metrics (bank classes, segmented images)"
$NTT evaluate "$DATA/annotations/instances_val2017.json" "$OUT/preds.json" --json "$OUT/metrics.json"
