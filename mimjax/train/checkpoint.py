"""Orbax checkpoints of a run: `W/checkpoints/<step>/{state,data}`.

`state` is the train state pytree (StandardSave), `data` the input iterator's position
(JSON), so a resumed run sees exactly the batches it would have seen. Orbax finalises a
step atomically (a temporary directory renamed when complete), so a run killed mid-save
resumes from the previous complete step. A step that fails to restore (corrupted,
truncated) is reported by name, moved aside to `<step>.unreadable` (not deleted, so it can
be inspected, and out of the way of the step being saved again), and the previous one is
tried. Orbax removes old steps (keep) only after a new one is finalised.

A full disk (or quota, or file-size limit) while saving stops the run with a
`DiskFullError` that names the step, the directory and the last complete step, which is
left intact; the partial step is removed so the space comes back. Before each save the
free space is compared with the bytes this process will write, so the common case stops
before anything is written.
"""
from __future__ import annotations

import errno
import glob
import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp
from jax.experimental.multihost_utils import sync_global_devices

from mimjax.errors import DiskFullError

log = logging.getLogger("mimjax")

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Orbax/TensorStore report write failures as ValueError('RESOURCE_EXHAUSTED: ... No space
# left on device'), so the text is checked as well as OSError.errno.
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


def disk_full_reason(e: BaseException | None) -> str | None:
    """Why e (or an exception it was raised from) is a full disk / quota / file-size limit,
    e.g. "No space left on device"; None when it is something else."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return os.strerror(e.errno)
        for text in _DISK_FULL_TEXT:
            if text in str(e):
                return text
        e = e.__cause__ or e.__context__
    return None


def is_disk_full(e: BaseException | None) -> bool:
    return disk_full_reason(e) is not None


def _bytes_to_write(tree) -> int:
    """Bytes of `tree` this process writes: its own shards, one replica of each."""
    total = 0
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            total += sum(s.data.nbytes for s in x.addressable_shards if s.replica_id == 0)
        else:
            total += getattr(x, "nbytes", 0)
    return total


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))
        self._saving = None  # the step of the last save started (async: maybe unfinished)

    def latest_step(self):
        return self.manager.latest_step()

    def complete_steps(self) -> list[int]:
        """Finalised steps on disk (Orbax renames a step to its number once complete)."""
        return sorted(int(d) for d in os.listdir(self.directory) if d.isdigit())

    def disk_full_error(self, step: int | None, why) -> DiskFullError:
        """Removes the partial step (its space comes back) and says what happened; why is
        the exception or a sentence."""
        if jax.process_index() == 0:  # partial steps are Orbax's `<step>.orbax-checkpoint-tmp*`
            for partial in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
                shutil.rmtree(partial, ignore_errors=True)
        good = [s for s in self.complete_steps() if s != step]
        kept = (f"The last complete checkpoint, {os.path.join(self.directory, str(good[-1]))}, is intact"
                if good else "No complete checkpoint exists yet")
        what = f"saving checkpoint step {step}" if step is not None else "writing the run's outputs"
        if isinstance(why, BaseException):
            why = disk_full_reason(why) or str(why)[:300]
        return DiskFullError(f"disk full while {what} in {self.directory} ({why}). {kept}; "
                             f"free some space (or lower keep_checkpoints) and rerun the same command "
                             f"to resume from it.")

    def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
        need, free = _bytes_to_write(state), shutil.disk_usage(self.directory).free
        if free < need:  # refuse before writing anything
            raise self.disk_full_error(step, f"{free / 2**20:.1f} MiB free, this process would write "
                                             f"{need / 2**20:.1f} MiB")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state))
        previous, self._saving = self._saving, step
        try:
            return self.manager.save(step, args=args, force=force)
        except Exception as e:  # the previous (async) save's failure surfaces here
            if is_disk_full(e):
                raise self.disk_full_error(previous if previous is not None else step, e) from e
            raise

    def restore_latest(self, abstract_state):
        """(step, state, data_state) of the newest step that restores, or None if none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                return step, out["state"], out["data"]
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                aside = os.path.join(self.directory, f"{step}.unreadable")
                log.warning("checkpoint step %d in %s could not be restored (%s: %s); moved it to %s "
                            "and trying the previous one", step, self.directory, type(e).__name__,
                            str(e)[:300], aside)
                if jax.process_index() == 0:
                    os.replace(os.path.join(self.directory, str(step)), aside)
                sync_global_devices(f"mimjax_quarantine_{step}")
                self.manager.reload()
        return None

    def wait(self):
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            if is_disk_full(e):
                raise self.disk_full_error(self._saving, e) from e
            raise

    def close(self):
        self.manager.close()


def load_state(directory: str) -> dict:
    """The train state of the latest checkpoint in `directory` as saved (nested dicts of
    arrays: `params`, `opt_state`, `ema_params`, ...); no target needed."""
    manager = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "data"))
    step = manager.latest_step()
    if step is None:
        raise ValueError(f"no complete checkpoint in {directory!r}")
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return state


def load_params(directory: str):
    """`params` of the latest checkpoint in `directory`, as saved (no target needed)."""
    return load_state(directory)["params"]
