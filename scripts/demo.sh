#!/usr/bin/env bash
# Installs mimjax into ./.venv (if needed) and runs the demo pre-training (configs/demo.py)
# on the embedded photos. Extra arguments go to `mimjax train` (e.g. --config.total_steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
mimjax train --config configs/demo.py --workdir workdirs/demo "$@"
echo "demo done: see workdirs/demo/ (snapshots/*.png, curves.png, metrics.jsonl, checkpoints/)"
