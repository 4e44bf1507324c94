"""Process environment for the CPU backend, set by entry points only (the `mimjax`
command, `python -m mimjax.train`, `python -m bench.throughput`, and `python -m
mimjax.procenv CMD...` for scripts such as scripts/test.sh), never by an import: importing
any mimjax module leaves the caller's process as it was.

Two measured wins on 2 CPU cores (bench/README.md); both change nothing on accelerators:
- Huge-page malloc, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`: an XLA program on the CPU
  backend allocates its scratch memory afresh on every call (4.6 GB for a ViT-S/16 forward
  + backward at batch 32) and gives it back afterwards. With 4 kB pages that was ~1.2 M
  page faults and 3-3.5 s of kernel time per call; with 2 MB pages 5-9 k faults, and the
  call took 5.7 s instead of 7.7 s. glibc reads its tunables only when a process starts,
  so the entry point re-executes itself (same PID, same arguments) with the variable set.
  Nothing happens off Linux/glibc; older glibc (< 2.35) ignores the unknown tunable; the
  kernel must allow THP (`/sys/kernel/mm/transparent_hugepage/enabled`: madvise or always).
- XLA CPU fast math (`CPU_FAST_MATH_FLAGS`), keeping NaN, Inf, division and math-function
  semantics exact, so a non-finite loss is still caught: ViT-S/16 forward + backward at
  batch 32 took 8.4 s instead of 10.7 s. Only xla_cpu_* flags. Read by XLA when JAX
  starts its backend, so it is set before.

The user's own choice wins: MIMJAX_HUGEPAGES=0 / MIMJAX_CPU_FAST_MATH=0 opt out, and a
GLIBC_TUNABLES that already names glibc.malloc.hugetlb or an XLA_FLAGS that already names
xla_cpu_enable_fast_math is left as it is.
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
CPU_FAST_MATH_FLAGS = ("--xla_cpu_enable_fast_math=true --xla_cpu_fast_math_honor_nans=true "
                       "--xla_cpu_fast_math_honor_infs=true --xla_cpu_fast_math_honor_division=true "
                       "--xla_cpu_fast_math_honor_functions=true")


# On GPUs JAX's allocator takes this share of the device's memory (XLA_PYTHON_CLIENT_MEM_FRACTION;
# JAX's own default, 0.75, leaves a quarter of an 80 GB H100 unused). `mimjax plan` counts with
# it (mimjax/parallel/targets.py). The user's own value wins; nothing changes on CPU or TPU.
GPU_MEM_FRACTION = "0.9"


def _on_glibc_linux() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def entry_point_env(env, *, glibc: bool | None = None) -> dict:
    """A copy of `env` with the huge-page tunable (on Linux/glibc), the CPU fast-math XLA flags
    and the GPU memory share added, each unless opted out or already chosen by the user."""
    out = dict(env)
    glibc = _on_glibc_linux() if glibc is None else glibc
    tunables = env.get("GLIBC_TUNABLES", "")
    if glibc and env.get("MIMJAX_HUGEPAGES", "1") != "0" and "glibc.malloc.hugetlb=" not in tunables:
        out["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    xla = env.get("XLA_FLAGS", "")
    if env.get("MIMJAX_CPU_FAST_MATH", "1") != "0" and "xla_cpu_enable_fast_math" not in xla:
        out["XLA_FLAGS"] = f"{xla} {CPU_FAST_MATH_FLAGS}".strip()
    out.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION)
    return out


def setup_process():
    """Call first in an entry point's `__main__`, before JAX is imported and before threads
    start. Re-executes the process (same PID, same arguments: `sys.orig_argv` replays the
    command as typed) when GLIBC_TUNABLES must change; otherwise only sets XLA_FLAGS."""
    env = entry_point_env(os.environ)
    if env.get("GLIBC_TUNABLES") != os.environ.get("GLIBC_TUNABLES"):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    os.environ.update(env)


def main(argv) -> int:
    """`python -m mimjax.procenv CMD [ARGS...]`: runs CMD with the entry-point environment."""
    if not argv:
        print("usage: python -m mimjax.procenv CMD [ARGS...]", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execvpe(argv[0], argv, entry_point_env(os.environ))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
