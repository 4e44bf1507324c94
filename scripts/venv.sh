# shellcheck shell=bash
# Sourced by the quick-start scripts: make ./.venv with the pinned requirements and mimjax
# (editable) installed, and activate it; with MIMJAX_TORCH=1 also the PyTorch interop
# extras (requirements-torch.txt, ~5.5 GB); with MIMJAX_WANDB=1 the Weights & Biases writer
# (requirements-wandb.txt, the [wandb] extra). Each part re-installs only when its files
# changed (one stamp per part, so the demo after the tests installs nothing).
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
install_part() {  # install_part NAME FILE...: pip install -r FILE when FILE(s) or setup.cfg changed
  local stamp=.venv/.mimjax-installed-$1 want
  shift
  want=$(cat "$@" setup.cfg | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    python -m pip install -q --upgrade pip
    for r in "$@"; do python -m pip install -q -r "$r" -c requirements.txt; done  # the pins hold
    python -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
  fi
}
install_part base requirements.txt
[ "${MIMJAX_DEV:-0}" = 1 ] && install_part dev requirements-dev.txt
[ "${MIMJAX_TORCH:-0}" = 1 ] && install_part torch requirements-torch.txt
[ "${MIMJAX_WANDB:-0}" = 1 ] && install_part wandb requirements-wandb.txt
true
