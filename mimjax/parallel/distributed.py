"""Multi-host runtime: `jax.distributed.initialize()` when this process is one of several."""
from __future__ import annotations

import logging
import os

from mimjax.errors import UsageError

log = logging.getLogger("mimjax")

MODES = ("auto", "on", "off")


def cluster_detected(env=None) -> bool:
    """A TPU pod slice, a SLURM job with several tasks or an Open MPI job."""
    env = os.environ if env is None else env
    many = lambda name: int(env.get(name, "1") or 1) > 1
    return (many("SLURM_NTASKS") or many("OMPI_COMM_WORLD_SIZE")
            or "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env)


def init_distributed(mode: str = "auto", coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None) -> bool:
    """jax.distributed.initialize() when this is one process of several; JAX finds the
    coordinator itself on TPU pods, SLURM and Open MPI, or from the explicit arguments.
    mode: auto (on when a cluster or coordinator_address says so) | on | off. Call it before
    anything touches the devices. Returns whether it initialised."""
    if mode not in MODES:
        raise UsageError(f"--distributed={mode}: expected one of {', '.join(MODES)}")
    explicit = coordinator_address is not None
    if mode == "off" or (mode == "auto" and not explicit and not cluster_detected()):
        return False
    if explicit and (num_processes is None or process_id is None):
        raise UsageError("--coordinator_address needs --num_processes and --process_id")
    import jax

    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()
    log.warning("process %d of %d, %d local device(s)", jax.process_index(), jax.process_count(),
                jax.local_device_count())
    return True
