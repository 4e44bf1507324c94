"""Orbax checkpoints of a run: `W/checkpoints/<step>/{state,data}`.

`state` is the train state pytree (StandardSave), `data` the input iterator's position
(JSON), so a resumed run sees exactly the batches it would have seen. Orbax finalises a
step atomically (a temporary directory renamed when complete), so a run killed mid-save
resumes from the previous complete step. A step that cannot be read (corrupted,
truncated) is reported by name, moved aside to `<step>.unreadable` (`.unreadable.1`, ... when
that name is taken; not deleted, so it can be inspected, and out of the way of the step being
saved again), and the previous one is tried. A step that reads but holds other parameter names
or shapes than the run's (another model or config) is no corruption: nothing is moved and a
ConfigError names the step and the first differences. Orbax removes old steps (keep) only
after a new one is finalised.

Reading a run outside training (`load_state`, `load_params`: export, eval, visualize, a frozen
teacher) restores onto this process's devices whatever devices the run was saved from.

A full disk (or quota, or file-size limit) while saving stops the run with a
`DiskFullError` that names the step, the directory and the last complete step, which is
left intact; the partial step is removed so the space comes back. Before each save the
free space is compared with the bytes this process will write, so the common case stops
before anything is written. Any other failure of a save (the folder became unwritable, a
file stands where Orbax makes a directory) is a `WriteError` saying the same, raised after
the step in which the background save failed (`check`), not at the next save.

The directory may be on an object store (gs://bucket/run/checkpoints; mimjax.paths). There
Orbax cannot rename: it writes `<step>/` in place and finalises it with
`<step>/commit_success.txt`, so a complete step is one holding that file (a partial one
is a numbered directory without it, and Orbax replaces it when that step is saved again);
moving a step aside copies and deletes it; there is no free-space check before a save.
"""
from __future__ import annotations

import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp
from jax.experimental.multihost_utils import sync_global_devices

from mimjax import paths
from mimjax.errors import DiskFullError, UsageError, WriteError
from mimjax.paths import disk_full_reason, is_disk_full  # noqa: F401 (the loop reads it from here)
from mimjax.schema import ConfigError

log = logging.getLogger("mimjax")

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
        self.directory = paths.absolute(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(paths.path(self.directory), options=options, item_handlers=_handlers())
        self._saving = None  # the step of the last save started (async: maybe unfinished)
        self._unchecked = False  # whether `check` has yet to look at that save's outcome

    def latest_step(self):
        return self.manager.latest_step()

    def complete_steps(self) -> list[int]:
        """Finalised steps on disk (Orbax renames a step to its number once complete;
        on an object store, writes its commit_success.txt)."""
        return complete_steps(self.directory)

    def save_error(self, step: int | None, why) -> WriteError:
        """Removes the partial step (its space comes back) and says what happened: a
        DiskFullError for a full disk, quota or file-size limit, else a WriteError naming
        the failure; why is the exception or a sentence (a full disk)."""
        if jax.process_index() == 0:  # partial steps: Orbax's `<step>.orbax-checkpoint-tmp*`
            for partial in _partial_steps(self.directory):
                paths.rmtree(partial)
        good = [s for s in self.complete_steps() if s != step]
        kept = (f"The last complete checkpoint, {paths.join(self.directory, str(good[-1]))}, is intact"
                if good else "No complete checkpoint exists yet")
        what = f"saving checkpoint step {step}" if step is not None else "writing the run's outputs"
        full = disk_full_reason(why) if isinstance(why, BaseException) else why
        if full:
            return DiskFullError(f"disk full while {what} in {self.directory} ({full}). {kept}; "
                                 f"free some space (or lower keep_checkpoints) and rerun the same command "
                                 f"to resume from it.")
        why = " ".join(str(why).split())[:300] or type(why).__name__
        return WriteError(f"cannot write while {what} in {self.directory} ({why}). {kept}; make "
                          f"{self.directory} a writable directory and rerun the same command to resume from it.")

    def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
        """Starts saving `step` (async); False when nothing was started. A step already saved
        or being saved (a signal arrived while its periodic save was starting, and the final
        save comes to the same step) is not saved again: the call waits for it instead. The
        previous save's failure is raised first (`wait`)."""
        if step == self._saving or step in self.manager.all_steps():
            log.info("checkpoint step %d is already saved or being saved: waiting for it", step)
            self.wait()
            return False
        self.wait()  # (Orbax waits for the previous save too): its failure ends the run here
        need = _bytes_to_write(state)
        free = need if paths.is_remote(self.directory) else shutil.disk_usage(self.directory).free  # local only
        if free < need:  # refuse before writing anything
            raise self.save_error(step, f"{free / 2**20:.1f} MiB free, this process would write "
                                        f"{need / 2**20:.1f} MiB")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state))
        self._saving, self._unchecked = step, True
        try:
            return self.manager.save(step, args=args, force=force)
        except OSError as e:  # a write in the synchronous part
            raise self.save_error(step, e) from e
        except Exception as e:
            if is_disk_full(e):
                raise self.save_error(step, e) from e
            raise

    def restore_latest(self, abstract_state):
        """(step, state, data_state) of the newest step that restores, or None if none.

        A step whose stored names/shapes differ from abstract_state's raises ConfigError and
        stays in place; only a step that cannot be read is moved aside (quarantine)."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                stored = flat_shapes(_state_metadata(self.manager, step))
            except Exception as e:  # noqa: BLE001 - its metadata cannot be read: corrupted
                self._quarantine(step, e)
                continue
            problems = _mismatches(stored, flat_shapes(abstract_state))
            if problems:
                raise ConfigError(
                    f"checkpoint step {step} in {self.directory} holds another model's parameters than "
                    f"this config's ({'; '.join(problems)}); use the run's own config or a new output "
                    f"directory (the checkpoint is left in place)")
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    # fallback: leaves given without a sharding go where a read-only load puts them
                    state=ocp.args.StandardRestore(abstract_state, fallback_sharding=_local_sharding()),
                    data=ocp.args.JsonRestore()))
                return step, out["state"], out["data"]
            except Exception as e:  # noqa: BLE001 - names and shapes agree: the data is unreadable
                self._quarantine(step, e)
        return None

    def _quarantine(self, step: int, e: BaseException):
        """Moves an unreadable step aside to `<step>.unreadable` (or `.unreadable.N` when taken)."""
        aside = paths.join(self.directory, f"{step}.unreadable")
        n = 0
        while paths.exists(aside if n == 0 else f"{aside}.{n}"):
            n += 1
        aside = aside if n == 0 else f"{aside}.{n}"
        log.warning("checkpoint step %d in %s could not be restored (%s: %s); moved it to %s "
                    "and trying the previous one", step, self.directory, type(e).__name__,
                    str(e)[:300], aside)
        if jax.process_index() == 0:
            paths.move(paths.join(self.directory, str(step)), aside)
        sync_global_devices(f"mimjax_quarantine_{step}_{n}")
        self.manager.reload()

    def wait(self):
        """Waits for the last save; its failure is a WriteError (`save_error`)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # the background save failed: nothing of it is kept
            raise self.save_error(self._saving, e) from e

    def check(self):
        """After a step: the last save's failure (`wait`) once its background work has ended;
        nothing while it runs, or after it succeeded (checked once)."""
        if self._unchecked and not self.manager.is_saving_in_progress():
            self._unchecked = False
            self.wait()

    def close(self):
        self.manager.close()


COMMIT_FILE = "commit_success.txt"  # Orbax's mark of a finalised step on an object store


def complete_steps(directory: str) -> list[int]:
    """The finalised steps in `directory` (none when it does not exist)."""
    if not paths.isdir(directory):
        return []
    steps = sorted(int(d) for d in paths.listdir(directory) if d.isdigit())
    if paths.is_remote(directory):
        steps = [s for s in steps if paths.exists(paths.join(directory, str(s), COMMIT_FILE))]
    return steps


def _partial_steps(directory: str) -> list[str]:
    """Paths of unfinished steps: `<step>.orbax-checkpoint-tmp*` on a disk, numbered
    directories without commit_success.txt on an object store."""
    if not paths.is_remote(directory):
        return paths.glob(directory, "*.orbax-checkpoint-tmp*")
    if not paths.isdir(directory):
        return []
    done = set(complete_steps(directory))
    return [paths.join(directory, d) for d in paths.listdir(directory) if d.isdigit() and int(d) not in done]


def _handlers() -> dict:
    # Named handlers let a fresh manager read a step's metadata before restoring it.
    return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}


def _state_metadata(manager, step: int):
    """The stored tree of the step's `state` (ArrayMetadata leaves: shape, dtype, sharding),
    read without restoring anything; raises when it cannot be read."""
    meta = manager.item_metadata(step)
    tree = None if meta is None else meta["state"]
    tree = getattr(tree, "tree", tree)
    if not tree:
        raise ValueError(f"no readable metadata for the train state of step {step}")
    return tree


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flat_shapes(tree) -> dict:
    """'params/encoder/.../kernel' -> shape; dict keys, sequence indices and dataclass fields
    alike, so a saved (nested dicts) tree and a live (TrainState) tree compare."""
    return {"/".join(_key_name(k) for k in path): tuple(getattr(v, "shape", ()))
            for path, v in jax.tree_util.tree_leaves_with_path(tree) if v is not None}


def _mismatches(stored: dict, expected: dict) -> list[str]:
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    wrong = sorted(f"{k} {stored[k]} (this config: {expected[k]})"
                   for k in set(stored) & set(expected) if stored[k] != expected[k])
    return [f"{label}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''} ({len(names)} in all)"
            for label, names in (("wrong shapes", wrong), ("not in the checkpoint", missing),
                                 ("only in the checkpoint", extra)) if names]


def _local_sharding() -> jax.sharding.Sharding:
    """Where a read-only load puts each array: this process's first device (one process), or
    replicated over all devices (several processes, so every process holds the whole value)."""
    if jax.process_count() == 1:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    mesh = jax.sharding.Mesh(jax.devices(), ("all",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def load_state(directory: str) -> dict:
    """The train state of the latest checkpoint in `directory` as saved (nested dicts of
    arrays: `params`, `opt_state`, `ema_params`, ...); no target needed. Restored onto this
    process's devices whatever devices it was saved from; UsageError naming the directory
    when it holds no complete checkpoint."""
    return load_latest(directory)[1]


def load_latest(directory: str) -> tuple[int, dict]:
    """(step, train state) of the latest checkpoint in `directory` (`load_state`)."""
    directory = paths.absolute(directory)
    if not complete_steps(directory):
        raise UsageError(f"{directory} holds no complete checkpoint (has the run saved one yet?)")
    manager = ocp.CheckpointManager(paths.path(directory), item_handlers=_handlers())
    try:
        step = manager.latest_step()
        if step is None:
            raise UsageError(f"{directory} holds no complete checkpoint (has the run saved one yet?)")
        sharding = _local_sharding()
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding)
            if getattr(m, "shape", None) is not None and getattr(m, "dtype", None) is not None else m,
            _state_metadata(manager, step))
        return step, manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    finally:
        manager.close()


def load_params(directory: str):
    """`params` of the latest checkpoint in `directory`, as saved (no target needed)."""
    return load_state(directory)["params"]
