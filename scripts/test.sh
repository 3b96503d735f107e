#!/usr/bin/env bash
# The test run: lint, import contract, then the test suite. Called by `make test` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
# The browser tests drive Debian's Chromium. This set-up step installs it when it is missing (needs root and
# apt); the tests themselves install nothing. Without it they skip locally and fail under CI=true.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "== installing chromium (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed: the browser tests skip (and fail when CI=true)"
fi
echo "== ruff"; $BIN/ruff check .
echo "== import contract"; $BIN/lint-imports
echo "== pytest"; $BIN/python -m pytest -q --timeout=900 "$@"
