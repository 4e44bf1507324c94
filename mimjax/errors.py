"""The errors a command reports as one line (`mimjax/cli.py`), without a traceback, and the
exit status each maps to. Here, in a module with no imports, so that the CLI can name them
before anything heavy is loaded.

- `UsageError` (2): input named on the command line that cannot be used (a directory that
  is not a mimjax workdir, an unreadable image, a value out of range). Config values
  raise `mimjax.schema.ConfigError` (also 2) instead.
- `DataError` (2, a `UsageError`): the input images cannot be read (none readable in a full
  pass, or more than half of those tried; `mimjax/data/pipeline.py`).
- `Interrupted` (130): Ctrl-C (SIGINT) stopped a run; the current step was checkpointed
  and the same command resumes it (`mimjax/train/loop.py`).
- `NonFiniteError` (3): the loss or gradients became non-finite (optimizer.nonfinite = 'halt').
- `WriteError` (4): a checkpoint could not be written (its folder became unwritable, a file
  stands where Orbax makes a directory); the run stops at once and the last complete
  checkpoint is intact. `DiskFullError` (4, a `WriteError`): the disk filled up while the
  run was writing.
"""
from __future__ import annotations


class UsageError(ValueError):
    """Bad command-line input; the message is one line naming the flag or path."""


class DataError(UsageError):
    """The data source's images are (mostly) unreadable; one line with counts and examples."""


class Interrupted(Exception):
    """Ctrl-C stopped a run after it saved the current step; the message is one line."""


class NonFiniteError(RuntimeError):
    """A step's loss or gradients were not finite (optimizer.nonfinite = 'halt')."""


class WriteError(RuntimeError):
    """A run's checkpoint could not be written; the last complete checkpoint is intact."""


class DiskFullError(WriteError):
    """The disk filled up while the run was writing; the last complete checkpoint is intact."""
