"""What the run's telemetry (mimjax/train/telemetry.py) costs a step: the host-side
bookkeeping of every step (the input-wait and step timers) and of a log row every
`--log_every` steps, timed over many steps with nothing else in them, against the same loop
without telemetry, alternating rounds; and, for scale, the tiny MAE step of the tests
(`mae:vit_tiny_patch16,runlocal`) timed on this machine. Telemetry adds no device sync: its
cost is this host time only.

    python -m bench.telemetry            # prints one JSON line; bench/README.md quotes it
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

if not __package__:  # `python bench/telemetry.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loop_seconds(steps: int, log_every: int, on: bool) -> float:
    from mimjax.train import telemetry

    t = telemetry.Telemetry(flops_per_step=1e12, peak=1e15, devices=8, warn_frac=1.0)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if on:
            with t.waiting_for_input():
                pass
            with t.step(step):
                pass
            if step % log_every == 0:
                t.row(log_every)
    return time.perf_counter() - start


def tiny_step_seconds() -> float:
    """Median seconds of the tiny MAE train step (compiled, batch 8, 2 cores)."""
    import jax

    from mimjax.train import config as config_lib
    from mimjax.train import step as step_lib

    c = config_lib.runlocal(config_lib.base_config())
    built = step_lib.build(c, 64)
    state = jax.jit(built.init_state)(jax.random.key(0))
    step = jax.jit(built.make_step(None))
    batch = {"image": jax.numpy.zeros((c.batch_size, c.model.img_size, c.model.img_size, 3))}
    key = jax.random.key(1)
    times = []
    for i in range(12):
        t0 = time.perf_counter()
        state, m = step(state, batch, None, key)
        jax.block_until_ready(m)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    on, off = [], []
    for _ in range(a.rounds):  # alternating: a load change slows both
        on.append(loop_seconds(a.steps, a.log_every, True))
        off.append(loop_seconds(a.steps, a.log_every, False))
    per_step_us = (statistics.median(on) - statistics.median(off)) / a.steps * 1e6
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    tiny = tiny_step_seconds()
    print(json.dumps({"cpu": cpu, "cores": os.cpu_count(), "steps": a.steps, "log_every": a.log_every,
                      "telemetry_us_per_step": round(per_step_us, 2), "tiny_mae_step_ms": round(tiny * 1e3, 2),
                      "share_of_tiny_step": per_step_us * 1e-6 / tiny}))


if __name__ == "__main__":
    main()
