#!/usr/bin/env bash
# One command for the paper's COCO-FSOD number (README of the research code: 30-shot, seed 33):
# 30 shots per novel class drawn from train2017 by the paper's sampler (--split coco-novel: the 20 VOC
# classes) -> memory bank -> segment val2017 -> novel-class bbox / segm AP beside the paper's 36.8 / 34.2.
#
#   bash scripts/reproduce_coco_fsod.sh                                   # real run (full COCO, GPU)
#   bash scripts/reproduce_coco_fsod.sh --random-weights --preset smoke --device cpu   # smoke test
#
# Data: $NTT_COCO_DIR, a folder with annotations/instances_{train,val}2017.json and images/{train,val}2017/,
# else ../shared/data/coco128-seg when present. Extra arguments go to `ntt bank build` and `ntt segment`.
# Env: NTT_REPRO_MAX_IMAGES (only the first N val images; default all), NTT_REPRO_OUT (output folder),
# NTT_REPRO_SHOTS / NTT_REPRO_SEED (default 30 / 33), NTT_SKIP_SETUP=1 (do not run scripts/setup.sh),
# NTT_BIN_DIR (folder of the `ntt` and `python` to use; default .venv/bin).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ "${NTT_SKIP_SETUP:-}" == 1 ]] || bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
BIN="${NTT_BIN_DIR:-$ROOT/.venv/bin}"
OUT="${NTT_REPRO_OUT:-$ROOT/out/reproduce_coco_fsod}"
SHOTS="${NTT_REPRO_SHOTS:-30}"
SEED="${NTT_REPRO_SEED:-33}"
SPLIT=coco-novel
mkdir -p "$OUT"

DATA="${NTT_COCO_DIR:-}"
if [[ -z "$DATA" && -d "$ROOT/../shared/data/coco128-seg" ]]; then DATA="$ROOT/../shared/data/coco128-seg"; fi
if [[ -z "$DATA" || ! -f "$DATA/annotations/instances_val2017.json" ]]; then
  echo "error: set NTT_COCO_DIR to a COCO 2017 folder (annotations/instances_{train,val}2017.json, images/{train,val}2017)" >&2
  exit 2
fi

ARGS=("$@")
if [[ " ${ARGS[*]-} " != *" --preset "* ]]; then ARGS+=(--preset paper); fi
MAX=()
if [[ -n "${NTT_REPRO_MAX_IMAGES:-}" ]]; then MAX=(--max-images "$NTT_REPRO_MAX_IMAGES"); fi

cat <<EOF
== NTT COCO-FSOD reproduction: $SHOTS shots, seed $SEED, split $SPLIT (the 20 VOC classes), val2017
   data: $DATA; options: ${ARGS[*]}; val images: ${NTT_REPRO_MAX_IMAGES:-all}
   NOTE: the paper's numbers need the full COCO 2017 (train2017 + val2017) and the paper's checkpoints
   (sam2_hiera_large.pt, dinov2_vitl14_pretrain.pth; see README "Checkpoints") with the paper preset.
   COCO128 or --random-weights only smoke-test this recipe: their metrics say nothing about the method.
EOF

echo "== 1/3 memory bank: paper sampling protocol on train2017"
"$BIN/ntt" bank build "$DATA/annotations/instances_train2017.json" --images "$DATA/images/train2017" \
  --split "$SPLIT" --shots "$SHOTS" --seed "$SEED" -o "$OUT/bank.safetensors" "${ARGS[@]}"
echo "== 2/3 segmenting val2017"
"$BIN/ntt" segment --bank "$OUT/bank.safetensors" --images "$DATA/annotations/instances_val2017.json" \
  --image-root "$DATA/images/val2017" "${MAX[@]}" -o "$OUT/preds.json" "${ARGS[@]}"
echo "== 3/3 COCO metrics on the $SPLIT classes (segmented images)"
mapfile -t NOVEL < <("$BIN/python" -c "from ntt.bank.sampling import SPLITS; print('\n'.join(SPLITS['$SPLIT']))")
"$BIN/ntt" evaluate "$DATA/annotations/instances_val2017.json" "$OUT/preds.json" --classes "${NOVEL[@]}" \
  --json "$OUT/metrics.json"

"$BIN/python" - "$OUT/metrics.json" "$SHOTS" "$SEED" <<'EOF'
import json, sys

metrics, shots, seed = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
paper = {("bbox", "AP"): 36.8, ("bbox", "AP50"): 54.5, ("bbox", "AP75"): 38.7, ("segm", "AP"): 34.2}
print(f"\n== novel-class AP (%): this run ({shots}-shot, seed {seed}) vs the paper (30-shot, seed 33)")
print(f"{'metric':<12}{'this run':>10}{'paper':>8}")
for (kind, name), value in paper.items():
    got = metrics[kind][name]  # None: no ground truth of these classes in the images evaluated
    print(f"{kind + ' ' + name:<12}{'n/a' if got is None else f'{100 * got:.1f}':>10}{value:>8.1f}")
EOF
echo "== wrote $OUT/bank.safetensors, $OUT/preds.json, $OUT/metrics.json"
echo "   (comparable to the paper only with the full COCO 2017, the paper's checkpoints and the paper preset)"
