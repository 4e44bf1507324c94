"""The GPA teacher's cost: its scoring alone (jitted `Teacher.scores`: blocks 0..block-1,
then the GPA block's q, k and the scores), the whole GPA "teacher" train step it is part of
(`bench.steps`: configs/gpa_mae.py with a frozen same-size teacher of random weights), and
the scoring's compiled memory at a large batch (XLA's memory analysis, compile only).

Written to compare two trees (the same script, PYTHONPATH pointing at either), e.g. the
scores from the [B, H, T, T] logits against the scores from q and k:

    python -m bench.teacher --sizes vit_small_patch16 vit_base_patch16 --batch 8 --heads one -1 \\
        --mem-size vit_base_patch16 --mem-batch 256

`--heads one` is the recipe's head (11; the last head, 5, for ViT-S's 6 heads), -1 the
mean over heads. Times are medians of `--repeats` runs after one warm-up run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from bench.steps import build_train_step, make_config
from mimjax.models import model_from_config
from mimjax.train.teacher import Teacher


def _median_s(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up (after the compile)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def config(size: str, batch: int, head: str, img_size: int = 224):
    return make_config("gpa_teacher", size, batch, img_size, "float32",
                       overrides=() if head == "one" else (f"teacher.head={head}",))


def teacher_of(c):
    """(Teacher, its random params) for config c."""
    teacher = Teacher.from_config(c, model_from_config(c.model).encoder)
    size = c.model.img_size
    params = jax.jit(lambda k: teacher.model.init(k, jnp.zeros((1, size, size, 3)))["params"])(jax.random.key(0))
    return teacher, params


def time_teacher(size: str, batch: int, head: str, repeats: int) -> dict:
    c = config(size, batch, head)
    teacher, params = teacher_of(c)
    images = jax.random.normal(jax.random.key(1), (batch, c.model.img_size, c.model.img_size, 3))
    fn = jax.jit(teacher.scores)
    t = time.perf_counter()
    fn = fn.lower(params, images).compile()
    compile_s = time.perf_counter() - t
    return dict(teacher_head=c.teacher.head, teacher_block=c.teacher.block, teacher_compile_s=round(compile_s, 1),
                teacher_s=round(_median_s(lambda: fn(params, images), repeats), 3))


def time_step(size: str, batch: int, head: str, repeats: int) -> dict:
    c = config(size, batch, head)
    step, (state, batch_, frozen, key) = build_train_step(c)
    t = time.perf_counter()
    step = step.lower(state, batch_, frozen, key).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def run():  # the state is donated: thread it through
        box[0], metrics = step(box[0], batch_, frozen, key)
        return metrics

    return dict(step_compile_s=round(compile_s, 1), step_s=round(_median_s(run, repeats), 3))


def teacher_memory(size: str, batch: int, head: str) -> dict:
    c = config(size, batch, head)
    teacher = Teacher.from_config(c, model_from_config(c.model).encoder)
    s = c.model.img_size
    params = jax.eval_shape(lambda k: teacher.model.init(k, jnp.zeros((1, s, s, 3)))["params"], jax.random.key(0))
    images = jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32)
    m = jax.jit(teacher.scores).lower(params, images).compile().memory_analysis()
    mib = lambda b: round(b / 2 ** 20, 1)  # noqa: E731
    return dict(size=size, batch=batch, teacher_head=c.teacher.head, temp_mib=mib(m.temp_size_in_bytes),
                argument_mib=mib(m.argument_size_in_bytes), output_mib=mib(m.output_size_in_bytes),
                peak_mib=mib(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
                             - m.alias_size_in_bytes))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["vit_small_patch16", "vit_base_patch16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", nargs="+", default=["one", "-1"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-step", action="store_true", help="time the teacher's scoring only")
    ap.add_argument("--mem-size", default="vit_base_patch16")
    ap.add_argument("--mem-batch", type=int, default=256, help="0: no memory analysis")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    info = dict(backend=jax.default_backend(), cpu=cpu_model(), cores=os.cpu_count(), jax=jax.__version__)
    print(json.dumps(info), flush=True)
    rows = []
    for size in args.sizes:
        for head in args.heads:
            row = dict(size=size, batch=args.batch, head=head, **time_teacher(size, args.batch, head, args.repeats))
            if not args.no_step:
                row.update(time_step(size, args.batch, head, args.repeats))
                row["teacher_share"] = round(row["teacher_s"] / row["step_s"], 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.mem_batch:
        for head in args.heads:
            row = dict(memory=True, **teacher_memory(args.mem_size, args.mem_batch, head))
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(info=info, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
