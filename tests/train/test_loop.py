"""The run loop every trainer shares (mimjax/train/loop.py): log and checkpoint cadence,
resume, SIGTERM, the transfer guard, shutdown; and a fine-tune preempted with SIGTERM."""
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


def run_toy(workdir, total, cfg=None, step=None, iterator=None, **hooks):
    cfg = cfg or toy_cfg()
    abstract = jax.eval_shape(toy_init)
    par = parallel.make(cfg.parallelism, abstract)
    return loop.run(str(workdir), cfg, name="toy", schedule=Schedule(5, total, 0, total / 5), par=par,
                    abstract_state=abstract, init_state=lambda: par.init_state(toy_init),
                    step_fn=step or par.compile_step(lambda axis: toy_step),
                    step_args=(jnp.float32(0.5), jax.random.key(1)), iterator=iterator or Counter(), **hooks)


def test_logs_checkpoints_resumes_and_shuts_down(tmp_path):
    calls = []
    sigterm_before = signal.getsignal(signal.SIGTERM)
    out = run_toy(tmp_path / "a", 7, log_fields=lambda: {"extra": 1},
                  on_log=lambda step, row, state, ckpt: calls.append(("log", step)),
                  before_save=lambda state, ckpt: calls.append(("save", int(state["step"]))),
                  at_end=lambda step, state, writer, preempted: ("end", step, preempted))
    assert (out.step, out.preempted, out.end) == (7, False, ("end", 7, False))
    rows = metrics.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4, 6, 7]  # log_every and the last step
    assert set(rows[0]) == {"step", "loss", "lr", "images_per_sec", "epoch", "extra"} and rows[-1]["epoch"] == 7 / 5
    assert sorted(int(s) for s in os.listdir(tmp_path / "a" / "checkpoints")) == [3, 6, 7]
    assert [c for c in calls if c[0] == "save"] == [("save", 3), ("save", 6), ("save", 7)]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["log_every"] == 2
    assert signal.getsignal(signal.SIGTERM) is sigterm_before  # the handler is put back

    # Resume to 10: the same weights and input positions as 10 steps straight.
    resumed = run_toy(tmp_path / "a", 10)
    straight = run_toy(tmp_path / "b", 10)
    assert resumed.step == straight.step == 10
    np.testing.assert_array_equal(resumed.state["w"], straight.state["w"])
    assert load_state(str(tmp_path / "a" / "checkpoints"))["step"] == 10
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))][4:] == [8, 10]
    # Nothing left to do: no step, no new checkpoint.
    again = run_toy(tmp_path / "a", 10)
    assert again.step == 10 and sorted(int(s) for s in os.listdir(tmp_path / "a" / "checkpoints")) == [3, 6, 7, 9, 10]


def test_sigterm_stops_between_steps_saves_and_returns(tmp_path):
    def preempt_at_3(step, state, writer):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    out = run_toy(tmp_path, 100, cfg=toy_cfg(checkpoint_every=1000), after_step=preempt_at_3,
                  at_end=lambda step, state, writer, preempted: preempted)
    assert out.preempted and out.end is True and out.step == 3
    assert os.listdir(tmp_path / "checkpoints") == ["3"]
    assert run_toy(tmp_path, 5).step == 5  # resumes


def test_an_implicit_transfer_in_the_step_raises(tmp_path):
    cfg = toy_cfg()
    par = parallel.make(cfg.parallelism, jax.eval_shape(toy_init))
    jitted = par.compile_step(lambda axis: toy_step)
    explicit = run_toy(tmp_path / "ok", 2, step=lambda s, b, scale, key: jitted(s, b, scale, key))
    assert explicit.step == 2
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


@pytest.mark.slow
def test_finetune_sigterm_saves_returns_and_resumes_bitwise(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "eval"))
    from test_finetune import tiny_config, tiny_workdir

    from mimjax.eval import finetune

    c = tiny_config(tiny_workdir(tmp_path / "pre"), steps=8)
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
