#!/usr/bin/env bash
# The GPU measurements of docs/BENCHMARKS.md in one go (the paper's models; nothing here is estimated):
#   1. the faithful reference mode (fp32, batch 1, 256 prompts per call, full-res merge) and the `fast`
#      preset side by side on the same images, plus the worst case where every candidate survives;
#   2. `fast` with DINOv2-guided prompting;
#   3. `fast` without torch.compile (what the compiler buys).
# Every run prints its table and writes it to $OUT/<name>.json / .txt.
#
#   bash scripts/benchmark_gpu.sh                     # random weights (timings only)
#   NTT_BENCH_WEIGHTS= bash scripts/benchmark_gpu.sh  # real checkpoints (see README: Checkpoints)
#
# Environment: PYTHON (default .venv/bin/python), NTT_BENCH_IMAGES (default COCO128 val of the shared
# data), NTT_BENCH_MAX_IMAGES (default 100), NTT_BENCH_OUT (default out/bench-gpu), NTT_BENCH_DEVICE
# (default cuda). Extra arguments go to every run (e.g. `--sam2 sam2_hiera_t --points-per-side 4` for a
# quick check of the script itself on a CPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-.venv/bin/python}"
IMAGES="${NTT_BENCH_IMAGES:-$ROOT/../shared/data/coco128-seg/images/val2017}"
N="${NTT_BENCH_MAX_IMAGES:-100}"
OUT="${NTT_BENCH_OUT:-$ROOT/out/bench-gpu}"
WEIGHTS="${NTT_BENCH_WEIGHTS---random-weights}"
DEVICE="${NTT_BENCH_DEVICE:-cuda}"
EXTRA=("$@")
mkdir -p "$OUT"

run() {
  local name=$1
  shift
  echo "== $name: $*"
  # shellcheck disable=SC2086  # WEIGHTS is empty or one flag
  "$PY" -m ntt.cli benchmark --images "$IMAGES" --max-images "$N" --device "$DEVICE" $WEIGHTS \
    --json "$OUT/$name.json" "$@" "${EXTRA[@]}" 2>&1 | tee "$OUT/$name.txt"
}

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
"$PY" -c "import sys, torch, timm, sam2; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'timm', timm.__version__, 'sam2', getattr(sam2, '__version__', '1.1.0'))" | tee -a "$OUT/gpu.txt"
run fast-vs-reference --preset fast --compare-reference --force-candidates
run fast-guided --preset fast --prompt-mode guided
run fast-no-compile --preset fast --no-compile
