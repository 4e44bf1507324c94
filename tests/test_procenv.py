"""The process environment of entry points (mimjax/procenv.py): what it adds and when not,
the re-exec (same PID, same arguments) and its effect on page faults, that fast math keeps
NaN/Inf semantics, and that importing mimjax changes nothing in the process."""
import functools
import json
import os
import platform
import re
import subprocess
import sys

import pytest

from mimjax import jaxenv, procenv

ON_GLIBC_LINUX = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
THP = "/sys/kernel/mm/transparent_hugepage/enabled"
FAST = procenv.CPU_FAST_MATH_FLAGS


def test_entry_point_env_adds_both_and_keeps_the_users_choice():
    env = functools.partial(procenv.entry_point_env, tpu=True)  # on a TPU host: JAX_PLATFORMS as it was
    gpu = {"XLA_PYTHON_CLIENT_MEM_FRACTION": procenv.GPU_MEM_FRACTION}
    assert env({"A": "1"}, glibc=True) == {"A": "1", "GLIBC_TUNABLES": procenv.TUNABLE, "XLA_FLAGS": FAST, **gpu}
    assert env({"A": "1"}, glibc=False) == {"A": "1", "XLA_FLAGS": FAST, **gpu}  # no tunables off glibc
    got = env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
              glibc=True)
    assert got["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert got["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 " + FAST
    mine = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0", "XLA_FLAGS": "--xla_cpu_enable_fast_math=false",
            "XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"}
    assert env(mine, glibc=True) == mine
    off = {"MIMJAX_HUGEPAGES": "0", "MIMJAX_CPU_FAST_MATH": "0"}
    assert env(off, glibc=True) == {**off, **gpu}
    assert env({"XLA_FLAGS": "/my/flags.txt"})["XLA_FLAGS"] == "/my/flags.txt"  # XLA reads a file of flags: kept


@pytest.mark.parametrize("installed,want", [(["tpu"], "cpu"), (["tpu", "cuda"], "cuda,cpu"), ([], None),
                                            (None, None)])  # None: a plugin of an unknown kind
def test_without_a_tpu_libtpu_is_left_unloaded(monkeypatch, installed, want):
    monkeypatch.setattr(jaxenv, "installed_platforms", lambda env: installed)
    got = procenv.entry_point_env({}, glibc=False, tpu=False)
    assert got.get("JAX_PLATFORMS") == got.get(jaxenv.AUTO_MARK) == want
    assert jaxenv.users_platforms(got) is None and "JAX_PLATFORMS" not in jaxenv.users_env(got)
    assert "JAX_PLATFORMS" not in procenv.entry_point_env({}, glibc=False, tpu=True)  # a TPU host: JAX looks
    mine = procenv.entry_point_env({"JAX_PLATFORMS": "tpu"}, glibc=False, tpu=False)  # the user's choice wins
    assert mine["JAX_PLATFORMS"] == "tpu" and jaxenv.users_platforms(mine) == "tpu" and jaxenv.users_env(mine) == mine


THIRD_PARTY = ["jax", "flax.linen", "optax", "orbax.checkpoint", "grain", "ml_collections", "absl.flags",
               "tensorboardX", "PIL.Image", "tensorflow_datasets"]
IMPORTS = ["mimjax", "mimjax.masking", "mimjax.models", "mimjax.export", "mimjax.data", "mimjax.parallel",
           "mimjax.train.pretrain", "mimjax.eval.finetune", "mimjax.eval.linprobe", "mimjax.cli"]


def test_importing_mimjax_changes_no_process_state():
    # JAX itself sets TF_CPP_MIN_LOG_LEVEL and TPU_SKIP_MDS_QUERY on import: the baseline is
    # taken after the third-party libraries mimjax uses are imported.
    code = (f"import importlib, json, os, sys; [importlib.import_module(m) for m in {THIRD_PARTY!r}]; "
            "before = dict(os.environ); "
            f"[importlib.import_module(m) for m in {IMPORTS!r}]; "
            "import jax; print(json.dumps([before == dict(os.environ), jax.config.jax_enable_x64, "
            "jax.config.jax_default_matmul_precision, os.environ.get('XLA_FLAGS', '')]))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    unchanged, x64, precision, xla_flags = json.loads(out.stdout.strip().splitlines()[-1])
    assert unchanged and not x64 and precision is None and xla_flags == ""


# The child sets up its process, then mallocs and touches 256 MiB and reports its PID, its
# GLIBC_TUNABLES, XLA_FLAGS and the minor page faults the touching cost (4 kB pages: 65,536).
CHILD = """
import ctypes, json, os, resource, sys
from mimjax import procenv
procenv.setup_process()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 256 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(ctypes.c_size_t(n))
ctypes.memset(p, 1, n)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), os.environ.get("XLA_FLAGS", ""), faults,
                  sys.argv[1:]]))
"""


def run_child(**env):
    env = {k: v for k, v in {**os.environ, **env}.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS") or v}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "--an", "arg"], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return proc.pid, *json.loads(out)


@pytest.mark.skipif(not ON_GLIBC_LINUX, reason="glibc tunables exist on Linux/glibc only")
def test_setup_process_reexecs_in_the_same_process_and_cuts_page_faults():
    popen_pid, pid, tunables, xla_flags, faults, args = run_child(GLIBC_TUNABLES="", XLA_FLAGS="", MIMJAX_HUGEPAGES="1")
    assert pid == popen_pid and tunables == procenv.TUNABLE and xla_flags == FAST and args == ["--an", "arg"]
    _, _, off, _, faults_off, _ = run_child(GLIBC_TUNABLES="", XLA_FLAGS="", MIMJAX_HUGEPAGES="0")
    assert off == "" and faults_off > 60_000  # 4 kB pages
    thp = open(THP).read() if os.path.exists(THP) else "[never]"
    if "[never]" in thp:
        pytest.skip(f"transparent huge pages are off on this kernel ({THP}: {thp.strip()})")
    assert faults < faults_off / 20, (faults, faults_off)  # 2 MB pages: ~128 faults


NONFINITE = """
import jax, jax.numpy as jnp, numpy as np
x = jnp.array([1.0, 0.0, jnp.inf, jnp.nan, -1.0])
finite, inv, ex, lg, mx = jax.jit(lambda x: (jnp.isfinite(x), 1.0 / x, jnp.exp(x), jnp.log(x), jnp.max(x)))(x)
np.testing.assert_array_equal(finite, [True, True, False, False, True])
np.testing.assert_array_equal(inv[:3], [1.0, np.inf, 0.0])
assert np.isnan(inv[3]) and np.isnan(ex[3]) and np.isnan(lg[4]) and np.isnan(mx)
assert lg[1] == -np.inf and ex[2] == np.inf
print("ok")
"""


def test_non_finite_values_survive_fast_math():
    """Run under `python -m mimjax.procenv`, as scripts/test.sh runs the tests."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MIMJAX_CPU_FAST_MATH")}
    out = subprocess.run([sys.executable, "-m", "mimjax.procenv", sys.executable, "-c",
                          "import os; assert 'xla_cpu_enable_fast_math=true' in os.environ['XLA_FLAGS']\n" + NONFINITE],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_procenv_loads_only_the_standard_library():
    code = ("import sys; from mimjax import procenv; "
            "print(sorted(m for m in ('jax', 'absl', 'ml_collections', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_setup_logging_shows_mimjax_info_and_hides_the_noise_in_one_plain_format():
    code = ("import logging; from absl import logging as absl_logging; from mimjax import procenv; "
            "procenv.setup_logging(); "
            "logging.getLogger('mimjax').info('mimjax says'); logging.getLogger('orbax').info('orbax says'); "
            "logging.getLogger('asyncio').error('asyncio says'); logging.getLogger('other').warning('other says'); "
            "absl_logging.warning('absl says'); absl_logging.info('absl info')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stderr.splitlines()
    # HH:MM:SS, then the level only from warnings up: no absl prefix (I1204 13:22:14.715469 140164894694272 x.py:79])
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines] == \
        ["mimjax says", "WARNING: other says", "WARNING: absl says"], out.stderr
    assert all(re.match(r"^\d\d:\d\d:\d\d \S", line) and "]" not in line for line in lines), out.stderr


# A thread keeps printing to stdout and stderr (as Orbax's threads do after a failed async
# save) while the main thread ends the process with its own line.
NOISY_EXIT = """
import sys, threading, time
from mimjax import procenv
def noise():
    while True:
        print("Traceback (most recent call last): Event loop is closed", file=sys.stderr, flush=True)
        print("noise", flush=True)
        time.sleep(0.001)
threading.Thread(target=noise, daemon=True).start()
time.sleep(0.05)
print("before", flush=True)
procenv.exit_with_last_line("mimjax train", "disk full while saving step 3", 4)
print("never")
"""


def test_exit_with_last_line_ends_the_process_with_its_line_last():
    out = subprocess.run([sys.executable, "-c", NOISY_EXIT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 4
    assert out.stderr.splitlines()[-1] == "mimjax train: disk full while saving step 3", out.stderr[-300:]
    assert "before" in out.stdout and "never" not in out.stdout


def test_plan_alone_gets_two_malloc_arenas(monkeypatch):
    """`mimjax plan` only compiles: two arenas keep the TPU compiler's threads from each holding
    a heap (host memory, docs/scaling.md); the user's own arena setting wins."""
    env = functools.partial(procenv.entry_point_env, tpu=True, glibc=True)
    assert env({}, plan=True)["GLIBC_TUNABLES"] == f"{procenv.TUNABLE}:{procenv.PLAN_TUNABLE}"
    assert env({"MIMJAX_HUGEPAGES": "0"}, plan=True)["GLIBC_TUNABLES"] == procenv.PLAN_TUNABLE
    assert env({}, plan=False)["GLIBC_TUNABLES"] == procenv.TUNABLE
    assert env({"MALLOC_ARENA_MAX": "8"}, plan=True)["GLIBC_TUNABLES"] == procenv.TUNABLE
    mine = "glibc.malloc.arena_max=4"
    assert env({"GLIBC_TUNABLES": mine}, plan=True)["GLIBC_TUNABLES"] == f"{mine}:{procenv.TUNABLE}"
    assert "GLIBC_TUNABLES" not in procenv.entry_point_env({}, tpu=True, glibc=False, plan=True)
    from mimjax import cli

    seen = []
    monkeypatch.setattr(procenv, "setup_process", lambda plan=False: seen.append(plan))
    for argv, want in ((["mimjax", "plan", "--help"], True), (["mimjax", "train", "--help"], False)):
        monkeypatch.setattr(sys, "argv", argv)
        assert cli.main() == 0 and seen[-1] is want
