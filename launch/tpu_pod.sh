#!/usr/bin/env bash
# mimjax on a Cloud TPU VM pod slice: ships this checkout's commit to every worker, installs it
# there, then starts one process per worker; jax.distributed finds the other workers by itself.
# Needs: gcloud configured for the project; a TPU VM slice (e.g. v4-32) already created;
#        WORKDIR on a filesystem every worker sees at the same path (NFS), or gs://BUCKET/PATH directly.
# Usage:   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
# Example: launch/tpu_pod.sh my-v4-32 us-central2-b configs/mae.py:vit_large_patch16 /mnt/shared/mae_l16 \
#              --config.data.data_dir=/mnt/shared/tensorflow_datasets --config.model.dtype=bfloat16
#          DRY_RUN=1 launch/tpu_pod.sh my-v4-32 us-central2-b configs/demo.py /tmp/demo
# What runs: the exact commit HEAD of this checkout (`git archive HEAD`, copied with `tpu-vm scp`
# into ~/mimjax-COMMIT/ on each worker), not a clone of a remote; untracked files stay behind.
# Uncommitted changes to tracked files are refused (commit them first), since the workers
# would not run them; MIMJAX_ALLOW_DIRTY=1 ships HEAD without them.
# Each worker installs the pinned versions (-c requirements.txt keeps jax[tpu] at the tested JAX,
# which takes its matching libtpu).
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -ge 4 ] || { sed -n '2,15p' "$0"; exit 2; }
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null) ||
  { echo "tpu_pod.sh: $(dirname "$0") is not in a git checkout: run it from a clone of mimjax" >&2; exit 2; }
commit=$(git -C "$root" rev-parse HEAD)
if ! git -C "$root" diff --quiet HEAD --; then
  if [ "${MIMJAX_ALLOW_DIRTY:-0}" != 1 ]; then
    echo "tpu_pod.sh: $root has uncommitted changes to tracked files (git status), and the workers get" \
      "commit $commit only: commit them, or set MIMJAX_ALLOW_DIRTY=1 to ship $commit without them" >&2
    exit 2
  fi
  echo "tpu_pod.sh: MIMJAX_ALLOW_DIRTY=1: the uncommitted changes in $root are not shipped" >&2
fi
echo "tpu_pod.sh: ships commit $commit ($(git -C "$root" log -1 --format=%s "$commit")) to every worker of $tpu"
name=mimjax-$commit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run git -C "$root" archive --format=tar.gz --prefix="$name/" -o "$tmp/$name.tar.gz" "$commit"
run gcloud compute tpus tpu-vm scp "$tmp/$name.tar.gz" "$tpu:$name.tar.gz" --zone "$zone" --worker=all
# Extracted again on every launch (a half-extracted tree from an interrupted one is completed);
# the venv beside it is kept, so a second launch of the same commit installs nothing new.
setup="set -e; tar -xzf $name.tar.gz; cd $name && python3 -m venv .venv \
 && .venv/bin/pip install -q -r requirements.txt -e '.[tpu]' -c requirements.txt"
train="cd $name && .venv/bin/mimjax train$(printf ' %q' --config "$config" --workdir "$workdir" "$@")"
run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$setup"
run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$train"
