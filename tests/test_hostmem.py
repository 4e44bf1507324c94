"""Huge-page malloc (mimjax/hostmem.py): the environment it builds, the re-exec of an entry
point (same PID, same arguments), and its effect, counted as the page faults of one
large malloc in a fresh process.

    python -m pytest tests/test_hostmem.py -q
"""
import os
import platform
import subprocess
import sys

import pytest

from mimjax import procenv as hostmem

ON_GLIBC_LINUX = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def test_env_adds_the_tunable_and_keeps_the_users_choice():
    assert hostmem.env_with_hugepages({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    got = hostmem.env_with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert got["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hostmem.env_with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert hostmem.env_with_hugepages({"MIMJAX_HUGEPAGES": "0"}) is None


# The child re-executes itself, then mallocs and touches 256 MiB and reports its PID, its
# GLIBC_TUNABLES and the minor page faults the touching cost (4 kB pages: 65,536).
CHILD = """
import ctypes, os, resource, sys
from mimjax import procenv as hostmem
hostmem.reexec_with_hugepages()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 256 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(ctypes.c_size_t(n))
ctypes.memset(p, 1, n)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), faults, sys.argv[1:])
"""


def run_child(**env):
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "GLIBC_TUNABLES" or v}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "--an", "arg"], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    pid, tunables, faults, args = out.split(" ", 3)
    return proc.pid, int(pid), tunables, int(faults), args.strip()


@pytest.mark.skipif(not ON_GLIBC_LINUX, reason="glibc tunables exist on Linux/glibc only")
def test_reexec_sets_the_tunable_in_the_same_process_and_cuts_page_faults():
    popen_pid, pid, tunables, faults, args = run_child(GLIBC_TUNABLES="", MIMJAX_HUGEPAGES="1")
    assert pid == popen_pid and tunables == hostmem.TUNABLE and args == "['--an', 'arg']"
    _, _, off, faults_off, _ = run_child(GLIBC_TUNABLES="", MIMJAX_HUGEPAGES="0")
    assert off == "" and faults_off > 60_000  # 4 kB pages
    thp = open(THP).read() if os.path.exists(THP) else "[never]"
    if "[never]" in thp:
        pytest.skip(f"transparent huge pages are off on this kernel ({THP}: {thp.strip()})")
    assert faults < faults_off / 20, (faults, faults_off)  # 2 MB pages: ~128 faults
