"""Host memory: let glibc back malloc with transparent huge pages (2 MB instead of 4 kB).

Why: an XLA program on the CPU backend allocates its scratch memory afresh on every call
(4.6 GB for a ViT-S/16 forward + backward at batch 32) and gives it back afterwards, so
every step touches that memory page by page again. With 4 kB pages that was ~1.2 M page
faults and 3-3.5 s of kernel time per call; with 2 MB pages 5-9 k faults, and the call
took 5.7 s instead of 7.7 s (2 cores; bench/README.md). On GPU/TPU hosts the device
programs do not allocate through malloc; any gain there (input pipeline) is unmeasured.

glibc reads its tunables only when a process starts, so the entry points (`mimjax`,
`python -m mimjax.train`, `python -m bench.throughput`) call `reexec_with_hugepages()`
first: it replaces the process (same PID, same arguments) by one with
`glibc.malloc.hugetlb=1` added to GLIBC_TUNABLES. Nothing happens off Linux/glibc, when the
variable already names the tunable (the user's choice wins), or with MIMJAX_HUGEPAGES=0.
Older glibc (< 2.35) ignores the unknown tunable; the kernel must allow THP
(`/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` or `always`).
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def env_with_hugepages(env) -> dict | None:
    """A copy of `env` with the tunable added to GLIBC_TUNABLES, or None when nothing should
    change (opted out with MIMJAX_HUGEPAGES=0, or the variable already sets
    glibc.malloc.hugetlb to any value)."""
    if env.get("MIMJAX_HUGEPAGES", "1") == "0":
        return None
    current = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb=" in current:
        return None
    return {**env, "GLIBC_TUNABLES": f"{current}:{TUNABLE}" if current else TUNABLE}


def reexec_with_hugepages():
    """Re-executes this Python process with the tunable set (see the module docstring).
    Call it first thing in a `__main__` entry point, before threads start; returns only
    when nothing needs to change."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    env = env_with_hugepages(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv replays the command as typed: `python -m mimjax.train ...`, a console
    # script, or `python -c ...`.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
