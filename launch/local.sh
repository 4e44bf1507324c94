#!/usr/bin/env bash
# mimjax on one host (all its GPUs/TPU cores, or the CPU).
# Needs: mimjax installed: pip install -r requirements.txt -e . -c requirements.txt
#        (GPUs: -e ".[gpu]"; TPU: -e ".[tpu]"; -c requirements.txt keeps the extra at the tested JAX).
# Usage:   launch/local.sh CONFIG WORKDIR [--config.key=value ...]
# Example: launch/local.sh configs/gpa_mae.py:vit_base_patch16 workdirs/gpa_b16 --config.teacher.path=workdirs/mae_b16
#          DRY_RUN=1 launch/local.sh configs/demo.py workdirs/demo      # print the command only
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -ge 2 ] || { sed -n '2,7p' "$0"; exit 2; }
config=$1 workdir=$2
shift 2
run mimjax train --config "$config" --workdir "$workdir" --distributed=off "$@"
