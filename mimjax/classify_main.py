"""`mimjax finetune` and `mimjax eval linprobe`: absl flags + a config file, as `mimjax train`,
and the config schema both classifiers share (`base_config`, checked by `validate`).

    mimjax finetune --config configs/finetune.py:vit_base_patch16 --workdir PRETRAIN_W --out FT_W
    mimjax eval linprobe --config configs/linprobe.py --workdir PRETRAIN_W [--out DIR]

--workdir is the pre-trained encoder: a pre-training workdir or a directory written by
`mimjax import`. Any config value can be overridden (`--config.batch_size=256`); the same
command again resumes from the latest checkpoint in the output directory. Exit status: 0,
2 for a config error (one line naming the key and value), 4 for a full disk.
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mimjax.schema import ConfigError

FLAGS = flags.FLAGS
# --- Command line ------------------------------------------------------------------
def _define_flags():
    if "workdir" not in FLAGS:  # `mimjax train` defines the same two in its process
        config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/finetune.py or "
                                        "configs/linprobe.py:runlocal.", lock_config=True)
        flags.DEFINE_string("workdir", None, "The pre-trained encoder: a pre-training workdir or a "
                            "`mimjax import` directory.")
        flags.mark_flags_as_required(["config", "workdir"])
    if "out" not in FLAGS:
        flags.DEFINE_string("out", None, "Output directory (checkpoints, metrics.jsonl, the result JSON); "
                            "required by finetune, default WORKDIR/linprobe for the linear probe.")


def _run(prog: str, argv, command):
    def main(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments {args[1:]}")
        from mimjax.train.checkpoint import DiskFullError

        logging.set_verbosity(logging.WARNING)  # absl: Orbax's per-file INFO lines
        std_logging.getLogger("mimjax").setLevel(std_logging.INFO)
        std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
        try:
            result = command(FLAGS.config, FLAGS.workdir, FLAGS.out)
        except ConfigError as e:
            print(f"mimjax: config error: {e}", file=sys.stderr)
            sys.exit(2)
        except DiskFullError as e:
            print(f"mimjax: {e}", file=sys.stderr)
            sys.exit(4)
        print(json.dumps(result))

    _define_flags()
    app.run(main, argv=[prog, *argv])


def finetune_main(argv):
    """`mimjax finetune FLAGS` (argv: the flags only)."""
    def command(config, workdir, out):
        if not out:
            raise ConfigError("--out is required: the fine-tuning output directory")
        from mimjax.eval import finetune
        return finetune.finetune(config, workdir, out)

    return _run("mimjax finetune", argv, command)


def linprobe_main(argv):
    """`mimjax eval linprobe FLAGS` (argv: the flags only)."""
    def command(config, workdir, out):
        from mimjax.eval import linprobe
        return linprobe.linprobe(config, workdir, out)

    return _run("mimjax eval linprobe", argv, command)


if __name__ == "__main__":  # python -m mimjax.classify_main finetune|linprobe FLAGS
    {"finetune": finetune_main, "linprobe": linprobe_main}[sys.argv[1]](sys.argv[2:])
