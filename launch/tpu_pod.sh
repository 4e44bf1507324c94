#!/usr/bin/env bash
# mimjax on a Cloud TPU VM pod slice: installs on every worker, then starts one process per
# worker; jax.distributed finds the other workers by itself (--distributed=auto).
# Needs: gcloud configured for the project; a TPU VM slice (e.g. v4-32) already created;
#        WORKDIR on a filesystem every worker sees at the same path (NFS), or gs://BUCKET/PATH directly.
# Usage:   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
# Example: launch/tpu_pod.sh my-v4-32 us-central2-b configs/mae.py:vit_large_patch16 /mnt/shared/mae_l16 \
#              --config.data.data_dir=/mnt/shared/tensorflow_datasets --config.model.dtype=bfloat16
#          DRY_RUN=1 launch/tpu_pod.sh my-v4-32 us-central2-b configs/demo.py /tmp/demo
# Env: MIMJAX_REPO (git URL to clone, default: this checkout's origin), MIMJAX_REF (default main).
# Each worker installs the pinned versions (-c requirements.txt keeps jax[tpu] at the tested JAX,
# which takes its matching libtpu).
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -ge 4 ] || { sed -n '2,12p' "$0"; exit 2; }
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${MIMJAX_REPO:-$(git -C "$(dirname "$0")" config --get remote.origin.url || true)}
[ -n "$repo" ] || { echo "tpu_pod.sh: set MIMJAX_REPO to the git URL the workers clone mimjax from" >&2; exit 2; }
ref=${MIMJAX_REF:-main}
setup="set -e; [ -d mimjax ] || git clone $repo mimjax; cd mimjax && git fetch -q && git checkout -q $ref \
 && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e '.[tpu]' -c requirements.txt"
extra=$(printf ' %q' "$@")
train="cd mimjax && .venv/bin/mimjax train --config $config --workdir $workdir$extra"
run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$setup"
run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$train"
