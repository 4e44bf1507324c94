#!/usr/bin/env bash
# The throughput benchmark, everything, with the defaults for the backend JAX finds
# (see bench/README.md). CPU: ViT-S, batch 32, 1 warm-up + 3 timed steps, < 10 min on 2 cores.
# Accelerators: ViT-T/S/B/L, batch 128, bfloat16, 5 + 20 steps. Extra flags go to
# bench/throughput.py, e.g.:
#   bash bench/run.sh
#   bash bench/run.sh --override model.remat=true --tag remat
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then
  PY=.venv/bin/python
fi
exec "$PY" -m bench.throughput "$@"
