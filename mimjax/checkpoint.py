"""Orbax checkpoints of a run: `W/checkpoints/<step>/{state,data}`.

`state` is the train state pytree (StandardSave), `data` the input iterator's position
(JSON), so a resumed run sees exactly the batches it would have seen. Orbax finalises a
step atomically (a temporary directory renamed when complete), so a run killed mid-save
resumes from the previous complete step. A step that fails to restore (corrupted,
truncated) is reported by name, moved aside to `<step>.unreadable` (not deleted, so it can
be inspected, and out of the way of the step being saved again), and the previous one is
tried. Orbax removes old steps (keep) only after a new one is finalised.
"""
from __future__ import annotations

import logging

log = logging.getLogger("mimjax")
import os

import jax
import orbax.checkpoint as ocp
from jax.experimental.multihost_utils import sync_global_devices


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state))
        return self.manager.save(step, args=args, force=force)

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
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def load_params(directory: str):
    """`params` of the latest checkpoint in `directory`, as saved (no target needed)."""
    manager = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "data"))
    step = manager.latest_step()
    if step is None:
        raise ValueError(f"no complete checkpoint in {directory!r}")
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return state["params"]
