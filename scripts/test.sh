#!/usr/bin/env bash
# Installs mimjax and its pinned dependencies into ./.venv (if needed) and runs the tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
python -m pytest -q "$@" || rc=$?
rc=${rc:-0}
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose (exit code 5 must not pass)" >&2
  exit 1
fi
exit "$rc"
