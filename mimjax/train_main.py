"""Command line of `mimjax train` / `python -m mimjax.train_main`: absl flags + config file."""
from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mimjax.config import ConfigError

FLAGS = flags.FLAGS


def _define_flags():
    if "workdir" in FLAGS:
        return
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py or "
                                    "configs/gpa_mae.py:vit_base_patch16.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, PNGs. "
                        "An existing workdir is resumed.")
    flags.mark_flags_as_required(["config", "workdir"])


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from mimjax import train  # heavy imports after flag parsing, so --help is instant
    logging.set_verbosity(logging.WARNING)  # absl: Orbax's per-file INFO lines
    std_logging.getLogger("mimjax").setLevel(std_logging.INFO)
    try:
        train.train(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:
        print(f"mimjax: config error: {e}", file=sys.stderr)
        sys.exit(2)


def run(argv):
    _define_flags()
    app.run(_main, argv=argv)


if __name__ == "__main__":
    run(sys.argv)
