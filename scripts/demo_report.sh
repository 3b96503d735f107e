#!/usr/bin/env bash
# A checkpoint's figures on the world's mixed benchmarks with the app's defaults (ESF-OMI, score threshold
# 0.5, domain-aware OMI off): PIQ, mIoU, PQ, AP, overlap recall, and PIQ per class, as `train predict` +
# `train evaluate --per-class` print them. The benchmarks' validation images are those of the bench
# (seed 0, 300 each, written once under resi-data/val).
#
#   bash scripts/demo_report.sh [CHECKPOINT] [BENCHMARKS...]    # default: checkpoints/demo M1 M2 M3 M4
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CHECKPOINT=${1:-checkpoints/demo}
shift || true
BENCHMARKS=("$@")
[ ${#BENCHMARKS[@]} -gt 0 ] || BENCHMARKS=(M1 M2 M3 M4)
N=${N:-300}
OUT=${OUT:-resi-data/demo-report/$(basename "$CHECKPOINT")}
mkdir -p "$OUT"
for bench in "${BENCHMARKS[@]}"; do
  data="resi-data/val/$bench-n$N"
  [ -f "$data/instances.json" ] || $BIN/python -m train world --benchmark "$bench" --split val --n "$N" --seed 0 \
    --out "$data" --overwrite --quiet
  spaces=$($BIN/python -c "from resi_core.world import BENCHMARKS; print(','.join(BENCHMARKS['$bench']))")
  echo "== $bench ($spaces), $N images: $CHECKPOINT"
  $BIN/python -m train predict --checkpoint "$CHECKPOINT" --images "$data/images" --spaces "$spaces" \
    --gt "$data/instances.json" --out "$OUT/$bench-pred.json" --no-progress
  $BIN/python -m train evaluate --gt "$data/instances.json" --pred "$OUT/$bench-pred.json" --per-class \
    --out "$OUT/$bench-eval.json" | tee "$OUT/$bench.txt"
done
