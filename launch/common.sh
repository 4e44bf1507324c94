# shellcheck shell=bash
# Sourced by the launch scripts. `run CMD...` prints the command, and runs it unless
# DRY_RUN=1 (then the scripts only show what they would do).
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}
