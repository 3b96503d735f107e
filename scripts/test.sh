#!/usr/bin/env bash
# The test run: lint, import contract, then the test suite. Called by `make test` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
echo "== ruff"; $BIN/ruff check .
echo "== import contract"; $BIN/lint-imports
echo "== pytest"; $BIN/python -m pytest -q --timeout=900 "$@"
