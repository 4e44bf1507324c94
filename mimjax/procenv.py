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

On a machine with no TPU where libtpu is installed (`bash scripts/test.sh` installs it), JAX
would load libtpu, which prints five `E0000 ... TPU_WORKER_HOSTNAMES` lines looking for one:
unless the user set JAX_PLATFORMS, it is set to the installed platforms without tpu ("cpu",
"cuda,cpu"; `mimjax.jaxenv.no_tpu_platforms`, which says what counts as a TPU host).

The `mimjax` command also sets up its logging here (`setup_logging`), and the way it ends:
help text into a closed pipe is quiet (`say`), and a run whose checkpoint threads are still
printing ends with its own line last (`exit_with_last_line`). All of it is called, never
done on import: this module loads only the standard library (absl inside `setup_logging`). Log
lines read as the progress line does: `13:22:14 message` (`PlainFormatter`).
"""
from __future__ import annotations

import logging
import os
import platform
import sys

from mimjax import jaxenv

TUNABLE = "glibc.malloc.hugetlb=1"
# `mimjax plan` only: two malloc arenas instead of glibc's default of eight a core. The TPU
# compiler's threads otherwise each keep their own heap: a ViT-B plan for v4-32 peaked at
# 6.1 GiB of host memory with the default and 5.1 GiB with two, in the same time (docs/scaling.md).
PLAN_TUNABLE = "glibc.malloc.arena_max=2"
CPU_FAST_MATH_FLAGS = ("--xla_cpu_enable_fast_math=true --xla_cpu_fast_math_honor_nans=true "
                       "--xla_cpu_fast_math_honor_infs=true --xla_cpu_fast_math_honor_division=true "
                       "--xla_cpu_fast_math_honor_functions=true")


# On GPUs JAX's allocator takes this share of the device's memory (XLA_PYTHON_CLIENT_MEM_FRACTION;
# JAX's own default, 0.75, leaves a quarter of an 80 GB H100 unused). `mimjax plan` counts with
# it (mimjax/parallel/targets.py). The user's own value wins; nothing changes on CPU or TPU.
GPU_MEM_FRACTION = "0.9"


def _on_glibc_linux() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def entry_point_env(env, *, glibc: bool | None = None, tpu: bool | None = None, plan: bool = False) -> dict:
    """A copy of `env` with the huge-page tunable (on Linux/glibc; for `plan`, the command that
    only compiles, also `PLAN_TUNABLE`), the CPU fast-math XLA flags, the GPU memory share and,
    on a machine with no TPU (`tpu`: whether it may have one, default: `jaxenv.tpu_host`), a
    JAX_PLATFORMS without tpu added, each unless opted out or already chosen by the user."""
    out = dict(env)
    platforms = jaxenv.no_tpu_platforms(env, tpu=tpu)
    if platforms:
        out["JAX_PLATFORMS"] = out[jaxenv.AUTO_MARK] = platforms
    glibc = _on_glibc_linux() if glibc is None else glibc
    tunables = env.get("GLIBC_TUNABLES", "")
    if glibc and env.get("MIMJAX_HUGEPAGES", "1") != "0" and "glibc.malloc.hugetlb=" not in tunables:
        tunables = out["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    if glibc and plan and "glibc.malloc.arena_max=" not in tunables and "MALLOC_ARENA_MAX" not in env:
        out["GLIBC_TUNABLES"] = f"{tunables}:{PLAN_TUNABLE}" if tunables else PLAN_TUNABLE
    xla = env.get("XLA_FLAGS", "")
    file_of_flags = not xla.strip().startswith("-") and xla.strip()  # XLA's reading of a value without a leading -
    if env.get("MIMJAX_CPU_FAST_MATH", "1") != "0" and "xla_cpu_enable_fast_math" not in xla and not file_of_flags:
        out["XLA_FLAGS"] = f"{xla} {CPU_FAST_MATH_FLAGS}".strip()
    out.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION)
    return out


def setup_process(plan: bool = False):
    """Call first in an entry point's `__main__`, before JAX is imported and before threads
    start (`plan`: the process only compiles, `mimjax plan`). Re-executes the process (same
    PID, same arguments: `sys.orig_argv` replays the command as typed) when GLIBC_TUNABLES must
    change; otherwise only sets XLA_FLAGS."""
    env = entry_point_env(os.environ, plan=plan)
    if env.get("GLIBC_TUNABLES") != os.environ.get("GLIBC_TUNABLES"):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    os.environ.update(env)


# --- Logging and the end of the process (the `mimjax` command) ---------------------------
class PlainFormatter(logging.Formatter):
    """Log records as the progress line reads: `13:22:14 message`, and from warnings up
    `13:22:14 WARNING: message`; no absl prefix (`I1204 13:22:14.715469 1401... file.py:79]`)."""

    def __init__(self):
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record):
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"{record.asctime} {level}{record.message}"


def setup_logging():
    """What absl's app.run did, in the progress line's plain format (`PlainFormatter`): absl's
    log handler on stderr, for absl.logging and the standard logging alike; mimjax's own INFO
    lines, but not Orbax's per-file ones nor asyncio's leftovers of a failed async write."""
    import faulthandler

    from absl import flags, logging as absl_logging

    absl_logging.use_absl_handler()
    absl_logging.get_absl_handler().setFormatter(PlainFormatter())
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("mimjax").setLevel(logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        if not faulthandler.is_enabled():
            faulthandler.enable()
    except Exception:  # noqa: BLE001 - e.g. no usable stderr file descriptor
        pass


def say(text: str) -> int:
    """Prints help or version text on stdout -> 0. A reader that stops early (`mimjax train
    --help | head`) is not an error: what is left unprinted goes to /dev/null, so neither
    this write nor the interpreter's flush at exit prints a BrokenPipeError."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def exit_with_last_line(prog: str, message: str, status: int):
    """Ends the process with `prog: message` as the last line on stderr. After a failed async
    save, Orbax's and TensorStore's threads keep printing "RuntimeError: Event loop is closed"
    tracebacks until the process dies; the caller has already closed the checkpointer and the
    writers, so: point fds 1 and 2 at /dev/null, write the line on a private copy of the old
    stderr, and exit without finalizers."""
    sys.stdout.flush()
    sys.stderr.flush()
    own = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    # the newline ends whatever half-printed traceback line the redirect cut off
    os.write(own, f"\n{prog}: {message}\n".encode())
    os._exit(status)


def main(argv) -> int:
    """`python -m mimjax.procenv CMD [ARGS...]`: runs CMD with the entry-point environment."""
    if not argv:
        print("usage: python -m mimjax.procenv CMD [ARGS...]", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execvpe(argv[0], argv, entry_point_env(os.environ))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
