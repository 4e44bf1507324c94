"""`python -m mimjax.train --config ... --workdir ...`: the same as `mimjax train`."""
import sys

from mimjax import procenv

procenv.reexec_with_hugepages()  # before the heavy imports, not after

from mimjax import train_main  # noqa: E402

train_main.run(sys.argv)
