#!/usr/bin/env bash
# Installs mimjax, its pinned dependencies and the PyTorch interop extras (for the
# timm/MAE parity tests) into ./.venv (if needed) and runs the tests: the fast ones first (a
# failure there shows within minutes), then the slow ones (end to end through the `mimjax`
# command); it fails when either part fails. Extra arguments go to one pytest run instead,
# e.g. `bash scripts/test.sh -m "not slow"` (the fast tests only) or `bash scripts/test.sh -k gcs`.
set -euo pipefail
cd "$(dirname "$0")/.."
export MIMJAX_TORCH=1 MIMJAX_DEV=1 MIMJAX_WANDB=1 HF_HUB_OFFLINE=1
source scripts/venv.sh

run_pytest() {  # run_pytest ARGS...: one pytest run; "no tests collected" (exit 5) is a failure
  local rc=0
  # The tests run with the process environment of the `mimjax` command (huge-page malloc, XLA
  # CPU fast math: mimjax/procenv.py), as a user's run would.
  python -m mimjax.procenv python -m pytest -q "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing on purpose (exit code 5 must not pass)" >&2
    rc=1
  fi
  return "$rc"
}

if [ "$#" -gt 0 ]; then
  run_pytest "$@"
  exit
fi
# One JAX compilation cache for both parts (tests/conftest.py makes one per pytest run
# otherwise): the slow tests then start with the fast tests' programs compiled.
JAX_COMPILATION_CACHE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/mimjax-tests-jax-cache-XXXXXX")
export JAX_COMPILATION_CACHE_DIR
trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
# Both parts in MIMJAX_TEST_WORKERS processes (pytest-xdist; default 2, one per core of the CI
# machine), each taking the next test when it is free.
workers=(-n "${MIMJAX_TEST_WORKERS:-2}" --dist worksteal)
fast=0 slow=0
echo "== fast tests (-m 'not slow')"
run_pytest "${workers[@]}" -m "not slow" || fast=$?
echo "== slow tests (-m slow)"
run_pytest "${workers[@]}" -m slow || slow=$?
echo "== fast tests: exit $fast; slow tests: exit $slow"
[ "$fast" -eq 0 ] && [ "$slow" -eq 0 ]
