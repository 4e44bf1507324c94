#!/usr/bin/env bash
# Installs mimjax, its pinned dependencies and the PyTorch interop extras (for the
# timm/MAE parity tests) into ./.venv (if needed) and runs the tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
export MIMJAX_TORCH=1 MIMJAX_DEV=1 MIMJAX_WANDB=1 HF_HUB_OFFLINE=1
source scripts/venv.sh
# The tests run with the process environment of the `mimjax` command (huge-page malloc, XLA
# CPU fast math: mimjax/procenv.py), as a user's run would.
python -m mimjax.procenv python -m pytest -q "$@" || rc=$?
rc=${rc:-0}
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose (exit code 5 must not pass)" >&2
  exit 1
fi
exit "$rc"
