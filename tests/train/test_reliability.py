"""Faults: kill -9, SIGTERM, corrupted checkpoints, non-finite steps, unwritable workdirs."""
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax.train import step as step_lib
from mimjax import data
from mimjax.train import config as config_lib
from mimjax.train import metrics
from mimjax.train import pretrain as train
from mimjax.train.checkpoint import load_params

CONFIG = "configs/gpa_mae.py:vit_tiny_patch16,runlocal"


def train_args(workdir, steps, *extra):
    """`mimjax train` of the tiny GPA recipe, logging and saving every step."""
    return ("train", "--config", CONFIG, "--workdir", workdir, f"--config.total_steps={steps}", "--config.log_every=1",
            "--config.checkpoint_every=1", *extra)


def wait_for_step(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if os.path.exists(path) and any(r["step"] >= step for r in metrics.read_metrics(path)):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never logged: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")


def finish(start_cli, workdir, steps):
    p = start_cli(*train_args(workdir, steps), stdout=subprocess.DEVNULL)
    assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]
    return load_params(os.path.join(workdir, "checkpoints"))


@pytest.mark.slow
def test_kill_9_anywhere_then_restart_gives_bitwise_the_same_weights(tmp_path, start_cli):
    want = finish(start_cli, tmp_path / "straight", 7)
    # Kill right after steps are logged: with a checkpoint every step and async saving,
    # these land during steps and during checkpoint writes.
    for i, kill_at in enumerate([1, 3, 5]):
        wd = tmp_path / f"killed{i}"
        p = start_cli(*train_args(wd, 7), stdout=subprocess.DEVNULL)
        wait_for_step(wd, kill_at, p)
        time.sleep(0.05 * i)
        p.send_signal(signal.SIGKILL)
        p.wait()
        got = finish(start_cli, wd, 7)
        jax.tree.map(np.testing.assert_array_equal, want, got)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_0(tmp_path, start_cli):
    p = start_cli(*train_args(tmp_path, 1000, "--config.checkpoint_every=100000"), stdout=subprocess.DEVNULL)
    wait_for_step(tmp_path, 2, p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0, p.stderr.read()[-2000:]
    last_logged = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))[-1]["step"]
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [last_logged]


LOGGED = dict(log_every=1, checkpoint_every=2)  # every step logged, every second one saved


@pytest.mark.slow
def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, tiny_config):
    c = tiny_config(total_steps=6, **LOGGED)
    train.train(c, str(tmp_path / "straight"))
    c.total_steps = 4
    train.train(c, str(tmp_path / "run"))
    ckdir = tmp_path / "run" / "checkpoints"
    for root, _, files in os.walk(ckdir / "4" / "state"):
        for f in files:  # flip bytes in every file of the newest step
            with open(os.path.join(root, f), "r+b") as fh:
                head = fh.read(64)
                fh.seek(0)
                fh.write(bytes(b ^ 0xFF for b in head))
    c.total_steps = 6
    train.train(c, str(tmp_path / "run"))
    assert "checkpoint step 4" in caplog.text and "could not be restored" in caplog.text
    assert os.path.isdir(ckdir / "4.unreadable") and os.path.isdir(ckdir / "6")
    want = load_params(str(tmp_path / "straight" / "checkpoints"))
    jax.tree.map(np.testing.assert_array_equal, want, load_params(str(ckdir)))


def poison_third_batch(monkeypatch):
    make = data.make_iterator

    def poisoned(*args, **kwargs):
        it = make(*args, **kwargs)
        inner, count = it._it, [0]

        class Poison:
            def __next__(self):
                batch = next(inner)
                count[0] += 1
                if count[0] == 3:
                    batch = {**batch, "image": np.full(batch["image"].shape, np.nan, np.float32)}  # uint8 or not
                return batch

            get_state, set_state = inner.get_state, inner.set_state

        it._it = Poison()
        return it

    monkeypatch.setattr(data, "make_iterator", poisoned)


@pytest.mark.slow
def test_nonfinite_halt_names_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, tiny_config):
    poison_third_batch(monkeypatch)
    with pytest.raises(train.NonFiniteError, match=r"non-finite loss or gradients at step 3 .*"
                                                  r"Last good checkpoint: .*checkpoints/2 \(kept\)"):
        train.train(tiny_config(total_steps=6, **LOGGED), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    params = load_params(str(tmp_path / "checkpoints"))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_nonfinite_skip_counts_and_goes_on(tmp_path, monkeypatch, tiny_config):
    poison_third_batch(monkeypatch)
    c = tiny_config(total_steps=5, **LOGGED)
    c.optimizer.nonfinite = "skip"
    train.train(c, str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["nonfinite_steps"] for r in rows] == [0, 0, 1, 1, 1]
    assert rows[2]["loss"] is None and rows[3]["loss"] is not None
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(load_params(str(tmp_path / "checkpoints"))))


def test_unwritable_workdir_is_refused_before_anything_starts(tmp_path, tiny_config):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(config_lib.ConfigError, match="is not writable"):
        train.train(tiny_config(total_steps=2, **LOGGED), str(tmp_path / "a_file" / "run"))
    assert (tmp_path / "a_file").read_text() == "x"


def test_skipped_update_leaves_weights_untouched(tiny_config):
    c = tiny_config(total_steps=4, **LOGGED)
    c.optimizer.nonfinite = "skip"
    built = step_lib.build(c, 100)
    state = jax.jit(built.init_state)(jax.random.key(0))
    step = jax.jit(built.make_step(None))
    bad = {"image": jnp.full((8, 32, 32, 3), jnp.nan)}
    new, m = step(state, bad, None, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
    assert int(new.nonfinite_steps) == 1 and int(new.first_nonfinite_step) == 0 and int(new.step) == 1


def test_bad_data_config_leaves_an_existing_workdir_untouched(tmp_path, tiny_config):
    c = tiny_config(total_steps=2, **LOGGED)
    train.train(c, str(tmp_path))
    before = (tmp_path / "config.json").read_text()
    c.data.source, c.data.name = "tfds", "no_such_dataset_xyz"
    with pytest.raises(config_lib.ConfigError, match="'no_such_dataset_xyz' is not a TFDS dataset"):
        train.train(c, str(tmp_path))
    assert (tmp_path / "config.json").read_text() == before
