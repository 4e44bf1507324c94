"""Failures across processes: two real `mimjax train` processes on localhost (jax.distributed,
CPU, gloo collectives), as tests/parallel/test_scale.py runs them.

- A SIGTERM on one process only is a preemption notice for both (JAX's preemption sync):
  both save the same step and exit 0, and resuming gives bitwise the weights of an
  uninterrupted run. Ctrl-C on one process is its preemption notice (it exits 130).
- A process killed with SIGKILL ends the other one, non-zero, within the heartbeat timeout,
  with a message naming the lost process (JAX's coordination service), instead of a hang.
"""
import os
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest

from mimjax import workdir as workdir_lib

# Long enough that a notice sent once step 1 is logged lands well before the end: on an idle
# 2-core EPYC the sync point fell at step 4-7 (steps ~0.15 s); under CI load once at step 10,
# which with 10 steps was the last one, so nothing was preempted.
STEPS = 40
HEARTBEAT_S = 10  # MIMJAX_HEARTBEAT_TIMEOUT for these runs (default 60)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two(start_cli, workdir, steps):
    """Two processes of one 2-process run, one CPU device each: the cross-process sums then
    add two terms, which is bitwise the same in either order (with 2 devices each, two
    uninterrupted runs already differed in the last bit at step 2: a 4-term sum's order
    varies)."""
    env = {"MIMJAX_HEARTBEAT_TIMEOUT": str(HEARTBEAT_S), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    args = ["train", "--config", "configs/gpa_mae.py:vit_tiny_patch16,runlocal", "--workdir", workdir,
            f"--config.total_steps={steps}", "--config.log_every=1", "--config.checkpoint_every=100",
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    return [start_cli(*args, f"--process_id={i}", devices=1, env=env) for i in (0, 1)]


def finish(procs, timeout=900):
    """[(returncode, stderr)] of each process."""
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, err))
    return out


def run_two(start_cli, workdir, steps):
    results = finish(start_two(start_cli, workdir, steps))
    for rc, err in results:
        assert rc == 0, err[-3000:]
    return results


def wait_for_step(procs, workdir, step=1, timeout=600):
    """Until metrics.jsonl (process 0) has a row for `step`: both are in the loop."""
    path, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                if re.search(rf'"step": {step}\b', f.read()):
                    return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        p.kill()
    pytest.fail(f"no step {step} in {path}: " + " | ".join((p.communicate()[1] or "")[-1500:] for p in procs))


def same_params(a, b):
    la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [jax.tree_util.keystr(k) for k, _ in la] == [jax.tree_util.keystr(k) for k, _ in lb]
    return [jax.tree_util.keystr(k) for (k, x), (_, y) in zip(la, lb) if not np.array_equal(np.asarray(x), np.asarray(y))]


@pytest.mark.slow
def test_sigterm_on_one_process_saves_the_same_step_on_both_and_resumes_bitwise(tmp_path, start_cli):
    wd = tmp_path / "preempted"
    procs = start_two(start_cli, wd, STEPS)
    wait_for_step(procs, wd, 1)
    procs[1].send_signal(signal.SIGTERM)  # the non-coordinator only: the notice must reach process 0
    results = finish(procs)
    saved = []
    for i, (rc, err) in enumerate(results):
        assert rc == 0, f"process {i}: {err[-3000:]}"
        steps = re.findall(r"preempted at step (\d+): checkpoint saved", err)
        assert len(steps) == 1, f"process {i}: {err[-3000:]}"
        assert re.search(rf"preemption notice: all 2 processes save step {steps[0]} and stop", err), err[-3000:]
        saved.append(int(steps[0]))
    assert saved[0] == saved[1] and 1 < saved[0] < STEPS, saved
    assert sorted(os.listdir(wd / "checkpoints")) == [str(saved[0])]

    run_two(start_cli, wd, STEPS)  # resume to the end on both processes
    assert max(int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit()) == STEPS
    run_two(start_cli, tmp_path / "straight", STEPS)
    assert same_params(workdir_lib.load_params(str(wd)), workdir_lib.load_params(str(tmp_path / "straight"))) == []


@pytest.mark.slow
def test_ctrl_c_on_one_process_is_its_preemption_notice(tmp_path, start_cli):
    """It exits 130, the other 0, both having saved the same step."""
    wd = tmp_path / "interrupted"
    procs = start_two(start_cli, wd, STEPS)
    wait_for_step(procs, wd, 1)
    procs[1].send_signal(signal.SIGINT)
    (rc0, err0), (rc1, err1) = finish(procs)
    assert rc0 == 0 and rc1 == 130, (rc0, rc1, err0[-2000:], err1[-2000:])
    step = re.findall(r"preempted at step (\d+): checkpoint saved", err0)
    assert len(step) == 1, err0[-3000:]
    assert f"mimjax train: interrupted (Ctrl-C): saved step {step[0]} in" in err1, err1[-3000:]
    assert sorted(os.listdir(wd / "checkpoints")) == [step[0]]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_process_ends_the_other_within_the_heartbeat_timeout_naming_it(tmp_path, victim, start_cli):
    wd = tmp_path / "killed"
    procs = start_two(start_cli, wd, 10_000)
    wait_for_step(procs, wd, 2)
    procs[victim].send_signal(signal.SIGKILL)
    other, t0 = procs[1 - victim], time.time()
    try:
        rc = other.wait(timeout=HEARTBEAT_S + 60)
    except subprocess.TimeoutExpired:
        other.kill()
        pytest.fail(f"process {1 - victim} still running {HEARTBEAT_S + 60} s after process {victim} was killed: "
                    f"{other.communicate()[1][-3000:]}")
    elapsed, err = time.time() - t0, other.communicate()[1]
    procs[victim].communicate()
    assert rc != 0, err[-3000:]
    assert elapsed < HEARTBEAT_S + 30, (elapsed, err[-3000:])
    if victim == 1:  # JAX's coordination service (on process 0) names the task after HEARTBEAT_S
        assert re.search(r"Task 1 heartbeat timeout|stopped sending heartbeats\):\s*1\b", err), err[-3000:]
        # and mimjax's own line first: the failed collective reached Python at once (gloo)
        assert "mimjax train: process 0 of 2 lost contact with another process" in err, err[-3000:]
    else:  # the service itself is gone: process 1 is ended at once
        assert "the leader task was preempted/died" in err, err[-3000:]


def test_heartbeat_timeout_comes_from_the_argument_the_environment_or_the_default():
    from mimjax.errors import UsageError
    from mimjax.parallel import distributed

    assert distributed.heartbeat_timeout(env={}) == distributed.DEFAULT_HEARTBEAT_TIMEOUT == 60
    assert distributed.heartbeat_timeout(env={"MIMJAX_HEARTBEAT_TIMEOUT": "15"}) == 15
    assert distributed.heartbeat_timeout(30, env={"MIMJAX_HEARTBEAT_TIMEOUT": "15"}) == 30
    for bad in ("soon", "0"):
        with pytest.raises(UsageError, match="MIMJAX_HEARTBEAT_TIMEOUT"):
            distributed.heartbeat_timeout(env={"MIMJAX_HEARTBEAT_TIMEOUT": bad})
    # one process: no error is taken for a lost process
    assert distributed.lost_process_error(ValueError("Gloo all-reduce failed: Connection reset by peer")) is None
