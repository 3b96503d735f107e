#!/usr/bin/env bash
# `make bench`: every benchmark script, one after another. Long: the model comparison alone takes
# most of an hour on a 2-core CPU. Figures are printed; nothing here is a pass/fail test.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "== world rendering speed";         $BIN/python scripts/bench_world.py
echo "== metrics on coco128 panoptic";   $BIN/python scripts/bench_metrics.py
echo "== storage latency";               $BIN/python scripts/bench_storage.py
echo "== dataset import and export";     $BIN/python scripts/bench_formats.py
echo "== RESI vs Mask2Former speed";     $BIN/python scripts/bench_speed.py
echo "== predictor stages";              $BIN/python scripts/bench_inference.py --checkpoint checkpoints/demo
echo "== a 24 MP photo: propose time and memory"; $BIN/python scripts/bench_large_photo.py --compare
echo "== app handlers";                  $BIN/python scripts/bench_app.py --checkpoint checkpoints/demo
echo "== 20 annotators saving at once (HTTP)"; $BIN/python scripts/bench_load.py
echo "== Label tab in Chromium";         $BIN/python scripts/bench_ui_latency.py --checkpoint checkpoints/demo
echo "== method comparison (SPEC §6)";   $BIN/python -m train bench --config configs/bench.json
