#!/usr/bin/env bash
# The compatibility matrix: Python {3.11, 3.12} x JAX {the pinned one, the newest on PyPI}.
# Each cell is a fresh venv under $MATRIX_DIR with requirements.txt (+ -dev), then for the
# "newest" column `pip install -U jax jaxlib flax optax orbax-checkpoint chex`; it runs the
# fast tests (`-m "not slow"`, no PyTorch: the parity tests skip) and 20 demo steps, and
# prints one Markdown row per cell (README "Install" holds the last table).
# CI (.ci/run) covers Python 3.11 x pinned with every test; this script the rest.
#   bash scripts/matrix.sh                      # all four cells
#   bash scripts/matrix.sh 3.12:newest 3.11:pinned
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo=$(pwd)
dir=${MATRIX_DIR:-/tmp/mimjax-matrix}
cells=("$@")
[ ${#cells[@]} -eq 0 ] && cells=(3.11:pinned 3.11:newest 3.12:pinned 3.12:newest)
mkdir -p "$dir"
python_for() {  # python_for 3.12 -> an interpreter of that version (PATH, then pyenv)
  if "python$1" --version >/dev/null 2>&1; then command -v "python$1"; return; fi  # (a pyenv shim may fail)
  local p
  p=$(find "${PYENV_ROOT:-$HOME/.pyenv}/versions" -maxdepth 3 -path "*/$1.*/bin/python" 2>/dev/null | sort -V | tail -1)
  [ -n "$p" ] && echo "$p"
}
rows=()
for cell in "${cells[@]}"; do
  py=${cell%%:*} jax=${cell##*:}
  venv="$dir/py$py-$jax" log="$dir/py$py-$jax.log"
  interp=$(python_for "$py") || true
  if [ -z "$interp" ]; then rows+=("| $py | $jax | - | no python$py here | - |"); continue; fi
  start=$(date +%s)
  {
    rm -rf "$venv" && "$interp" -m venv "$venv" &&
    "$venv/bin/python" -m pip install -q --upgrade pip &&
    "$venv/bin/python" -m pip install -q -r requirements.txt -r requirements-dev.txt &&
    if [ "$jax" = newest ]; then
      "$venv/bin/python" -m pip install -q -U jax jaxlib flax optax orbax-checkpoint chex
    fi &&
    "$venv/bin/python" -m pip install -q --no-deps -e . &&
    "$venv/bin/python" -m mimjax.procenv "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" &&
    "$venv/bin/python" -m mimjax.cli train --config demo --workdir "$venv/demo" --config.total_steps=20 \
        --config.log_every=10 --config.snapshot_every=0
  } >"$log" 2>&1
  rc=$?
  versions=$("$venv/bin/python" -c "import jax, flax, orbax.checkpoint as o, sys; \
print(f'{sys.version.split()[0]} | jax {jax.__version__}, flax {flax.__version__}, orbax {o.__version__}')" 2>/dev/null \
    || echo "$py | not installed")
  tests=$(grep -E "^[0-9]+ (passed|failed)" "$log" | tail -1)
  loss=$(grep -oE "step 20/20 .* loss [0-9.]+" "$log" | grep -oE "loss [0-9.]+" | tail -1)
  result=$([ $rc -eq 0 ] && echo "ok" || echo "FAILED (see $log)")
  rows+=("| $versions | ${tests:-no test summary} | demo 20 steps: ${loss:-no loss} | $result, $(($(date +%s) - start)) s |")
done
echo "Matrix run $(date -u +%Y-%m-%d) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, from $repo:"
echo "| Python | JAX stack | fast tests | demo | result |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
