"""Command line of `mimjax train` / `python -m mimjax.train_main`: absl flags + config file."""
from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mimjax.train.config import ConfigError

FLAGS = flags.FLAGS


def _define_flags():
    if "workdir" in FLAGS:
        return
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py or "
                                    "configs/gpa_mae.py:vit_base_patch16.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, PNGs. "
                        "An existing workdir is resumed.")
    flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                      "Multi-host runtime (jax.distributed): auto = on when a TPU pod slice, a SLURM "
                      "job with several tasks, an Open MPI job or the coordinator flags say so.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU hosts without SLURM).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
    flags.mark_flags_as_required(["config", "workdir"])


def _cluster_detected() -> bool:
    env = os.environ
    many = lambda name: int(env.get(name, "1") or 1) > 1
    return (many("SLURM_NTASKS") or many("OMPI_COMM_WORLD_SIZE")
            or "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env)


def init_distributed():
    """jax.distributed.initialize() when this is one process of several; JAX finds the
    coordinator itself on TPU pods, SLURM and Open MPI, or from the explicit flags."""
    explicit = FLAGS.coordinator_address is not None
    if FLAGS.distributed == "off" or (FLAGS.distributed == "auto" and not explicit and not _cluster_detected()):
        return
    import jax

    if explicit:
        if FLAGS.num_processes is None or FLAGS.process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    else:
        jax.distributed.initialize()
    logging.warning("process %d of %d, %d local device(s)", jax.process_index(), jax.process_count(),
                    jax.local_device_count())


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    init_distributed()  # before anything touches the devices
    from mimjax.train import pretrain as train  # heavy imports after flag parsing, so --help is instant
    from mimjax.train.checkpoint import DiskFullError
    logging.set_verbosity(logging.WARNING)  # absl: Orbax's per-file INFO lines
    std_logging.getLogger("mimjax").setLevel(std_logging.INFO)
    # A failed async Orbax write leaves hundreds of "Task exception was never retrieved"
    # lines from asyncio; the error itself reaches us (DiskFullError below) and is printed once.
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
    try:
        train.train(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:
        print(f"mimjax: config error: {e}", file=sys.stderr)
        sys.exit(2)
    except train.NonFiniteError as e:
        print(f"mimjax: {e}", file=sys.stderr)
        sys.exit(3)
    except DiskFullError as e:
        print(f"mimjax: {e}", file=sys.stderr)
        # train() has already waited for and closed the checkpointer and the writers. A
        # normal interpreter exit would now garbage-collect Orbax's failed async tasks, and
        # their "RuntimeError: Event loop is closed" could land after our one line.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(4)


def run(argv):
    _define_flags()
    app.run(_main, argv=argv)


if __name__ == "__main__":
    run(sys.argv)
