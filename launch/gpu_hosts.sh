#!/usr/bin/env bash
# mimjax on several GPU hosts without SLURM: run this once on every host, with the same
# coordinator (host 0's address and a free port) and each host's own index.
# Needs: mimjax installed on every host with pip install -r requirements.txt -e ".[gpu]" -c requirements.txt;
#        the hosts reach each other on the port; WORKDIR on a filesystem all hosts share.
# Usage:   launch/gpu_hosts.sh COORDINATOR_HOST:PORT NUM_HOSTS HOST_INDEX CONFIG WORKDIR [--config.key=value ...]
# Example: on host 0: launch/gpu_hosts.sh 10.0.0.1:1234 2 0 configs/mae.py:vit_base_patch16 /shared/mae_b16
#          on host 1: launch/gpu_hosts.sh 10.0.0.1:1234 2 1 configs/mae.py:vit_base_patch16 /shared/mae_b16
#          DRY_RUN=1 launch/gpu_hosts.sh 127.0.0.1:1234 2 0 configs/demo.py /tmp/demo
# One process per host drives all of that host's GPUs.
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -ge 5 ] || { sed -n '2,10p' "$0"; exit 2; }
coordinator=$1 num_hosts=$2 host_index=$3 config=$4 workdir=$5
shift 5
run mimjax train --config "$config" --workdir "$workdir" --coordinator_address "$coordinator" \
  --num_processes "$num_hosts" --process_id "$host_index" "$@"
