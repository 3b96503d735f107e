#!/usr/bin/env bash
# The demo checkpoint's training data (configs/world_demo.json): every label space of the generated world
# annotated on every scene kind, 40 % its own and 20 % each other, 5,000 images each, seed 0.
set -euo pipefail
cd "$(dirname "$0")/.."
KINDS=(street portrait drive parts)
for space in "${KINDS[@]}"; do
  others=()
  for kind in "${KINDS[@]}"; do [ "$kind" = "$space" ] || others+=("$kind"); done
  domains="$space,$space,$(IFS=,; echo "${others[*]}")"
  .venv/bin/python -m train world --dataset "$space" --domains "$domains" --split train --n 5000 --seed 0 \
    --out "resi-data/demo-data/$space" "$@"
done
