# shellcheck shell=bash
# Sourced by the quick-start scripts: make ./.venv with the pinned requirements and mimjax
# (editable) installed, and activate it; with MIMJAX_TORCH=1 also the PyTorch interop
# extras (requirements-torch.txt, ~5.5 GB). Re-installs only when those files changed.
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.mimjax-installed
reqs=(requirements.txt)
[ "${MIMJAX_TORCH:-0}" = 1 ] && reqs+=(requirements-torch.txt)
want=$(cat "${reqs[@]}" setup.cfg | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  for r in "${reqs[@]}"; do python -m pip install -q -r "$r"; done
  python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
