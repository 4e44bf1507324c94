"""`python -m mimjax.train --config ... --workdir ...`: the same as `mimjax train`."""
import sys

from mimjax import procenv

procenv.setup_process()  # before the heavy imports, not after

from mimjax import cli  # noqa: E402

sys.exit(cli.main(["mimjax", "train", *sys.argv[1:]]))
