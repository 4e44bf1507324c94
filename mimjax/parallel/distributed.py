"""Multi-host runtime: `jax.distributed.initialize()` when this process is one of several.

Failure handling across processes (docs/rundir.md "Fault tolerance"):
- Preemption: JAX's preemption sync manager (created by `jax.distributed.initialize`, on by
  default, `jax_enable_preemption_service`) installs its own C++ SIGTERM handler; a SIGTERM
  on any process is a notice to all of them, and `reached_sync_point(step)` (one mutex-guarded
  integer compare per step, no RPC until a notice arrives) says on every process at which one
  step all of them save and stop (`mimjax/train/loop.py`).
- A lost process: every process sends heartbeats to JAX's coordination service (on process
  0); one silent for `heartbeat_timeout` seconds is declared dead and the runtime ends every
  other process (SIGABRT, its log line names the task: "Task 1 heartbeat timeout"); if
  process 0 itself dies, the others are ended at once ("the leader task was
  preempted/died"). A failed collective seen first (gloo: "Connection reset by peer") is one
  mimjax line (`mimjax/cli.py`, `lost_process_error`) before that.
"""
from __future__ import annotations

import logging
import os

from mimjax.errors import UsageError

log = logging.getLogger("mimjax")

MODES = ("auto", "on", "off")
HEARTBEAT_ENV = "MIMJAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT = 60  # seconds; JAX's own default is 100
_heartbeat_s: int | None = None  # what init_distributed used


def cluster_detected(env=None) -> bool:
    """A TPU pod slice, a SLURM job with several tasks or an Open MPI job."""
    env = os.environ if env is None else env
    many = lambda name: int(env.get(name, "1") or 1) > 1
    return (many("SLURM_NTASKS") or many("OMPI_COMM_WORLD_SIZE")
            or "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env)


def heartbeat_timeout(value: int | None = None, env=None) -> int:
    """Seconds without a heartbeat after which a process counts as lost: `value`, else
    $MIMJAX_HEARTBEAT_TIMEOUT, else 60."""
    env = os.environ if env is None else env
    if value is None:
        raw = env.get(HEARTBEAT_ENV, "").strip()
        try:
            value = int(raw) if raw else DEFAULT_HEARTBEAT_TIMEOUT
        except ValueError:
            raise UsageError(f"{HEARTBEAT_ENV}={raw!r}: expected a whole number of seconds") from None
    if value < 1:
        raise UsageError(f"{HEARTBEAT_ENV}={value}: expected at least 1 second")
    return value


def init_distributed(mode: str = "auto", coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None,
                     heartbeat_timeout_s: int | None = None) -> bool:
    """jax.distributed.initialize() when this is one process of several; JAX finds the
    coordinator itself on TPU pods, SLURM and Open MPI, or from the explicit arguments.
    mode: auto (on when a cluster or coordinator_address says so) | on | off. Call it before
    anything touches the devices. heartbeat_timeout_s (default $MIMJAX_HEARTBEAT_TIMEOUT or
    60): how long a silent process takes to be declared lost, which ends the others.
    Also turns on JAX's preemption sync (a SIGTERM on one process stops all at one step).
    Returns whether it initialised."""
    if mode not in MODES:
        raise UsageError(f"--distributed={mode}: expected one of {', '.join(MODES)}")
    explicit = coordinator_address is not None
    if mode == "off" or (mode == "auto" and not explicit and not cluster_detected()):
        return False
    if explicit and (num_processes is None or process_id is None):
        raise UsageError("--coordinator_address needs --num_processes and --process_id")
    global _heartbeat_s
    timeout = _heartbeat_s = heartbeat_timeout(heartbeat_timeout_s)
    import jax

    jax.config.update("jax_enable_preemption_service", True)  # the default; loop.py relies on it
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   heartbeat_timeout_seconds=timeout)
    else:
        jax.distributed.initialize(heartbeat_timeout_seconds=timeout)
    log.warning("process %d of %d, %d local device(s)", jax.process_index(), jax.process_count(),
                jax.local_device_count())
    return True


def preemption_sync() -> bool:
    """Whether this process is one of several with JAX's preemption sync manager running
    (then SIGTERM belongs to JAX's handler and `reached_sync_point` decides when to stop)."""
    import jax
    from jax._src import distributed as jax_distributed

    return jax.process_count() > 1 and getattr(jax_distributed.global_state, "preemption_sync_manager",
                                                None) is not None


def reached_sync_point(step: int) -> bool:
    """True on every process at the same step once any of them got a preemption notice
    (SIGTERM): JAX computes it as 1 + the furthest step any process had reported. Call it
    after every step, with consecutive steps, on every process. Cost: a mutex and an integer
    compare in C++; only the one call after a notice blocks, until every process has
    reported its step (the coordination service's barrier, about a second)."""
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(step)


_LOST_MARKERS = ("gloo", "nccl", "connection reset", "connection closed", "socket closed",
                 "heartbeat", "coordination service", "unavailable:")


def lost_process_error(e: BaseException) -> str | None:
    """For a multi-process run: if `e` looks like a collective or the coordination service
    failing because another process went away, one line saying so (None otherwise)."""
    import sys

    if "jax" not in sys.modules:
        return None
    from jax._src import distributed as jax_distributed

    state = jax_distributed.global_state
    if state.client is None or state.num_processes <= 1:
        return None
    text = str(e)
    if not any(m in text.lower() for m in _LOST_MARKERS):
        return None
    first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
    return (f"process {state.process_id} of {state.num_processes} lost contact with another process "
            f"({first}); JAX's coordination service ends this one within {_heartbeat_s or DEFAULT_HEARTBEAT_TIMEOUT} s "
            f"({HEARTBEAT_ENV}), naming the lost one on stderr ('Task N heartbeat timeout', or 'the leader task' "
            f"for process 0); restart every process to resume from the last complete checkpoint")
