"""Peak memory of one MAE / GPA-MAE train step per device, from XLA's compiled memory
analysis (arguments + outputs + temporaries; no allocator slack), for model sizes x batch
per device x remat. Runs on any backend; numbers from the CPU backend approximate what a
GPU/TPU needs (same program, different fusion decisions).

    python bench/memory.py --sizes vit_base_patch16 vit_large_patch16 --batch 64 --out bench/results/memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp

from mimjax.train import config as config_lib
from mimjax.train import step as step_lib


def step_memory(size: str, batch: int, remat: bool, gpa: bool, dtype: str) -> dict:
    c = config_lib.base_config()
    c.model.name, c.model.remat, c.model.dtype = "mae_" + size, remat, dtype
    c.batch_size, c.total_steps = batch, 1000
    c.masking.strategy = "gpa" if gpa else "random"
    c.teacher.source, c.teacher.block, c.teacher.head = ("self", 9, 11) if gpa else ("none", 9, 11)
    built = step_lib.build(c, num_examples=1000 * batch)
    state = jax.eval_shape(built.init_state, jax.random.key(0))
    images = jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32)
    step = jax.jit(built.make_step(None), donate_argnums=(0,))
    t = time.perf_counter()
    compiled = step.lower(state, {"image": images}, None, jax.random.key(0)).compile()
    m = compiled.memory_analysis()
    gib = lambda b: round(b / 2 ** 30, 2)
    return dict(size=size, batch_per_device=batch, remat=remat, gpa_teacher=gpa, dtype=dtype,
                params_m=round(sum(x.size for x in jax.tree.leaves(state.params)) / 1e6, 1),
                argument_gib=gib(m.argument_size_in_bytes), output_gib=gib(m.output_size_in_bytes),
                temp_gib=gib(m.temp_size_in_bytes),
                peak_gib=gib(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
                             - m.alias_size_in_bytes),
                compile_s=round(time.perf_counter() - t, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["vit_base_patch16", "vit_large_patch16", "vit_huge_patch14"])
    ap.add_argument("--batch", type=int, nargs="+", default=[64])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default="bench/results/memory.json")
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        for b in args.batch:
            for remat in (False, True):
                row = step_memory(size, b, remat, gpa=True, dtype=args.dtype)
                print(json.dumps(row), flush=True)
                rows.append(row)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
                   "host": platform.node(), "jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
