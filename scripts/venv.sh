# shellcheck shell=bash
# Sourced by the quick-start scripts: make ./.venv with the pinned requirements and mimjax
# (editable) installed, and activate it. Re-installs only when requirements.txt or
# setup.cfg changed since the last install.
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.mimjax-installed
want=$(cat requirements.txt setup.cfg | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
