"""What every trainer's loop shares (mimjax/train/loop.py, `Run`): log and checkpoint cadence,
resume, SIGTERM and Ctrl-C, the transfer guard, a full disk, shutdown; and a fine-tune
preempted with SIGTERM."""
import errno
import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mimjax import parallel
from mimjax.errors import DiskFullError, Interrupted
from mimjax.schema import ConfigError
from mimjax.train import loop, metrics
from mimjax.train.checkpoint import load_params, load_state
from mimjax.train.schedule import Schedule

B = 4  # the toy batch


class Counter:
    """A host iterator with a resumable position: batch i is [i, i, i, i]."""

    num_skipped = 0

    def __init__(self):
        self.i = 0

    def __next__(self):
        self.i += 1
        return {"x": np.full((B,), self.i, np.float32)}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


def toy_cfg(**kw):
    c = ml_collections.ConfigDict({"log_every": 2, "checkpoint_every": 3, "keep_checkpoints": 100, "batch_size": B,
                                   "seed": 0, "data": {"prefetch": 2}, "parallelism": {"mode": "jit", "data": -1,
                                                                                       "fsdp": 1, "model": 1}})
    c.update(kw)
    return c


def toy_init():
    return {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros((3,), jnp.float32)}


def toy_step(state, batch, scale, key):  # w += scale * mean(x) + a key-dependent constant
    w = state["w"] + scale * batch["x"].mean() + jax.random.uniform(jax.random.fold_in(key, state["step"]))
    return {"step": state["step"] + 1, "w": w}, {"loss": w.sum(), "lr": scale}


def run_toy(workdir, total, cfg=None, step=None, iterator=None, events=None, after_step=None):
    """A toy trainer's loop on a `loop.Run`, as the trainers write theirs; `events` gets
    ("log", step) and ("save", step) in order. Returns (the Run, the final state)."""
    cfg = cfg or toy_cfg()
    events = [] if events is None else events
    abstract = jax.eval_shape(toy_init)
    par = parallel.make(cfg.parallelism, abstract)
    step_fn = step or par.compile_step(lambda axis: toy_step)
    with loop.Run(str(workdir), cfg, name="toy", schedule=Schedule(5, total, 0, total / 5), par=par,
                  abstract_state=abstract, init_state=lambda: par.init_state(toy_init),
                  iterator=iterator or Counter()) as run:
        state = run.start_state
        args = run.replicate((jnp.float32(0.5), jax.random.key(1)))
        for i, batch in run.batches():
            with run.step(i):
                state, m = step_fn(state, batch, *args)
            if run.log(i, m, extra=1) is not None:
                events.append(("log", i))
            run.profile(i, (state, m))
            if run.should_save(i):
                events.append(("save", i))
                run.save(i, state)
            if after_step is not None:
                after_step(i)
        if run.final_save_due:
            events.append(("save", run.steps_done))
            run.save(run.steps_done, state, final=True)
    return run, state


def test_logs_checkpoints_resumes_and_shuts_down(tmp_path):
    events = []
    sigterm_before = signal.getsignal(signal.SIGTERM)
    run, _ = run_toy(tmp_path / "a", 7, events=events)
    assert (run.steps_done, run.preempted) == (7, False)
    rows = metrics.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4, 6, 7]  # log_every and the last step
    assert set(rows[0]) == {"step", "loss", "lr", "images_per_sec", "epoch", "extra", "step_time_s",
                            "input_wait_frac"} and rows[-1]["epoch"] == 7 / 5
    assert run.last_row == {k: v for k, v in rows[-1].items() if k != "step"}
    # Row 7 is the mean of step 7 alone; row 2 of steps 1 and 2 (w after step i, from the
    # batches [1..1], [2..2], ... and the key's constants, recomputed here).
    u = [float(jax.random.uniform(jax.random.fold_in(jax.random.key(1), i))) for i in range(7)]
    w = np.cumsum([0.5 * (i + 1) + u[i] for i in range(7)])  # one weight (all three are equal)
    np.testing.assert_allclose([rows[0]["loss"], rows[-1]["loss"]], [3 * (w[0] + w[1]) / 2, 3 * w[6]], rtol=1e-5)
    assert sorted(int(s) for s in os.listdir(tmp_path / "a" / "checkpoints")) == [3, 6, 7]
    assert events == [("log", 2), ("save", 3), ("log", 4), ("log", 6), ("save", 6), ("log", 7), ("save", 7)]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["log_every"] == 2
    assert signal.getsignal(signal.SIGTERM) is sigterm_before  # the handler is put back

    # Resume to 10: the same weights and input positions as 10 steps straight.
    (resumed, w_resumed), (straight, w_straight) = run_toy(tmp_path / "a", 10), run_toy(tmp_path / "b", 10)
    assert resumed.start_step == 7 and resumed.steps_done == straight.steps_done == 10
    np.testing.assert_array_equal(w_resumed["w"], w_straight["w"])
    assert load_state(str(tmp_path / "a" / "checkpoints"))["step"] == 10
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))][4:] == [8, 10]
    # Nothing left to do: no step, no new checkpoint.
    events = []
    again, _ = run_toy(tmp_path / "a", 10, events=events)
    assert again.steps_done == 10 and events == [] and again.last_row == {}
    assert sorted(int(s) for s in os.listdir(tmp_path / "a" / "checkpoints")) == [3, 6, 7, 9, 10]


def test_sigterm_stops_between_steps_saves_and_leaves_normally(tmp_path):
    def preempt_at_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    events = []
    run, _ = run_toy(tmp_path, 100, cfg=toy_cfg(checkpoint_every=1000), after_step=preempt_at_3, events=events)
    assert run.preempted and run.steps_done == 3
    assert events == [("log", 2), ("save", 3)]  # the save after the loop
    assert os.listdir(tmp_path / "checkpoints") == ["3"]
    assert run_toy(tmp_path, 5)[0].steps_done == 5  # resumes


def test_ctrl_c_saves_the_step_then_leaving_raises_interrupted(tmp_path):
    sigint_before = signal.getsignal(signal.SIGINT)

    def ctrl_c_at_2(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match=r"saved step 2 in .*checkpoints; the same command resumes"):
        run_toy(tmp_path, 100, after_step=ctrl_c_at_2)
    assert os.listdir(tmp_path / "checkpoints") == ["2"]
    assert signal.getsignal(signal.SIGINT) is sigint_before
    assert run_toy(tmp_path, 4)[0].start_step == 2  # the lock was released: the same run resumes


def test_a_full_disk_in_the_loop_is_a_disk_full_error_and_everything_is_released(tmp_path):
    def fail_at_2(error):
        def after_step(step):
            if step == 2:
                raise error
        return after_step

    with pytest.raises(DiskFullError):
        run_toy(tmp_path, 5, after_step=fail_at_2(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(ValueError, match="not an OSError"):  # any other error passes unchanged
        run_toy(tmp_path / "b", 5, after_step=fail_at_2(ValueError("not an OSError")))
    run, _ = run_toy(tmp_path, 5)  # the lock was released; nothing was saved before step 3
    assert (run.start_step, run.steps_done) == (0, 5)


def test_an_implicit_transfer_in_the_step_raises(tmp_path):
    cfg = toy_cfg()
    par = parallel.make(cfg.parallelism, jax.eval_shape(toy_init))
    jitted = par.compile_step(lambda axis: toy_step)
    explicit, _ = run_toy(tmp_path / "ok", 2, step=lambda s, b, scale, key: jitted(s, b, scale, key))
    assert explicit.steps_done == 2
    sigterm_before = signal.getsignal(signal.SIGTERM)
    for implicit in (np.float32(0.5), 0.5):  # a NumPy array or a Python scalar: host -> device
        with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
            run_toy(tmp_path / "bad", 2, step=lambda s, b, scale, key, v=implicit: jitted(s, b, v, key))
    assert signal.getsignal(signal.SIGTERM) is sigterm_before


def test_resuming_with_another_input_position_format_is_a_config_error(tmp_path):
    run_toy(tmp_path, 3)

    class Refuses(Counter):
        def set_state(self, state):
            raise ValueError("saved with another batch size")

    with pytest.raises(ConfigError, match=r"config.batch_size=4, seed=0: cannot resume .*saved with another"):
        run_toy(tmp_path, 6, iterator=Refuses())
    assert run_toy(tmp_path, 6)[0].steps_done == 6  # the refused start released the lock


def test_a_changed_config_names_the_callers_flag(tmp_path):
    run_toy(tmp_path, 2)
    abstract = jax.eval_shape(toy_init)
    cfg = toy_cfg(seed=1)
    par = parallel.make(cfg.parallelism, abstract)
    with pytest.raises(ConfigError, match="--out"):
        with loop.Run(str(tmp_path), cfg, name="toy", flag="--out", schedule=Schedule(5, 4, 0, 0.8), par=par,
                      abstract_state=abstract, init_state=lambda: par.init_state(toy_init), iterator=Counter()):
            pass


@pytest.mark.slow
def test_finetune_sigterm_saves_returns_and_resumes_bitwise(tmp_path, monkeypatch, tiny_config):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "eval"))
    from test_finetune import classifier_config, tiny_workdir

    from mimjax.eval import finetune

    c = classifier_config(tiny_workdir(tiny_config, tmp_path / "pre"), steps=8)
    straight = finetune.finetune(c, None, str(tmp_path / "straight"))
    write = metrics.MetricWriter.write

    def sigterm_at_step_5(self, step, row):  # checkpoints every 4: the SIGTERM save is step 5's
        write(self, step, row)
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(metrics.MetricWriter, "write", sigterm_at_step_5)
    stopped = finetune.finetune(c, None, str(tmp_path / "resumed"))
    assert stopped == {"task": "finetune", "preempted": True, "steps": 5}
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["4", "5"]
    assert not (tmp_path / "resumed" / "finetune.json").exists()  # no result for an unfinished run
    monkeypatch.setattr(metrics.MetricWriter, "write", write)
    resumed = finetune.finetune(c, None, str(tmp_path / "resumed"))
    a, b = (load_params(str(tmp_path / d / "checkpoints")) for d in ("straight", "resumed"))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert resumed == straight
