"""The parts of a step that are not the model: the masking alone (device) and the input
pipeline alone (host: JPEG decoding + MAE augmentation), for `bench/throughput.py`.

    python -c "from bench import inputs; print(inputs.bench_pipeline(224, 32, 4))"
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from bench import steps
from mimjax.train import config as config_lib
from mimjax import data


def bench_masking(args, step_rows: list[dict], time_calls, calls: int = 20) -> list[dict]:
    """Microseconds per batch of the step's masking (`train.make_mask`: per-image keys,
    vmapped `masking.random_mask` / `masking.gpa_mask`, jitted), and its share of each
    step row's median time (mask_us, mask_share are added to the rows)."""
    out = []
    for strategy, method in (("random", "mae"), ("gpa", "gpa_teacher")):
        if not any(steps.METHODS[m][0] == steps.METHODS[method][0] for m in args.methods):  # no step of this recipe
            continue
        c = steps.make_config(method, args.models[0], args.batch, args.img_size, args.dtype)
        fn, fargs = steps.build_masking(c)
        compiled = fn.lower(*fargs).compile()

        def many(compiled=compiled, fargs=fargs):
            for _ in range(calls):
                r = compiled(*fargs)
            jax.block_until_ready(r)

        per_call = [t / calls for t in time_calls(many, 1, 5)]
        us = round(1e6 * statistics.median(per_call), 1)
        out.append({"strategy": strategy, "batch": args.batch, "num_patches": int(fargs[1].shape[1]),
                    "us_per_batch": us})
        for r in step_rows:
            if (r["method"] == "mae") == (strategy == "random"):
                r.update(mask_us=us, mask_share=us / 1e3 / r["step_ms"]["median"])
    return out


def write_jpegs(directory: str, n: int, size=(500, 375), seed: int = 0):
    """n JPEGs of ImageNet's typical size: smooth random colour fields plus noise (quality 90)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize(size, Image.BICUBIC)
        img = np.clip(np.asarray(low, np.int16) + rng.integers(-20, 21, (size[1], size[0], 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(os.path.join(directory, f"img_{i:04d}.jpg"), quality=90)


def _rate(data_cfg, img_size: int, batch: int, batches: int, source=None) -> float:
    """img/s of `data.make_iterator` from its creation through `batches` batches (the reader
    threads' head start is thereby counted, not hidden)."""
    t = time.perf_counter()
    it = data.make_iterator(data_cfg, img_size=img_size, global_batch_size=batch, seed=0, source=source)
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - t)


def bench_pipeline(img_size: int, batch: int, batches: int) -> list[dict]:
    """mimjax.data's training iterator (decode + RandomResizedCrop + flip + normalise) on a
    folder of generated JPEGs and on the embedded photos (already decoded: augmentation only)."""
    cfg = config_lib.base_config().data
    threads = min(16, os.cpu_count() or 1)  # what the pipeline uses (mimjax/data/pipeline.py)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_jpegs_") as d:
        write_jpegs(d, max(batch * 2, 64))
        cfg.source, cfg.folder = "folder", d
        rows.append({"source": "folder (500x375 JPEG)", "img_size": img_size, "batch": batch, "threads": threads,
                         "img_per_s": round(_rate(cfg, img_size, batch, batches), 1)})
    cfg.source = "embedded"
    src = data.make_source(cfg)  # loading the photos is not part of the rate
    rows.append({"source": "embedded (decoded photos)", "img_size": img_size, "batch": batch, "threads": threads,
                     "img_per_s": round(_rate(cfg, img_size, batch, batches, src), 1)})
    return rows


def notes(meta: dict, args) -> list[str]:
    """What a reader of the tables must know to compare them."""
    n = ["img/s and step ms: median over the timed steps after warm-up; compilation excluded.",
         ("GFLOP/img: analytic model FLOPs (mimjax/flops.py; train = 3x fwd, frozen teacher 1x fwd); "
          "XLA/analytic: XLA's cost analysis (counts elementwise ops too) over that."),
         "Teacher for smaller ViTs: block 9, head min(11, heads-1) (head 11 exists only from ViT-B)."]
    if meta["backend"] == "cpu":
        n.append("CPU: 'MFU or of-matmul' is the achieved FLOP/s over the measured XLA float32 2048^3 matmul FLOP/s.")
    elif meta.get("peak_bf16_flops"):
        n.append(f"MFU against the dense bf16 peak {meta['peak_bf16_flops'] / 1e12:.0f} TFLOP/s "
                 f"(also for float32 rows).")
    else:
        n.append("Unknown device: MFU omitted.")
    if meta["backend"] == "gpu":
        n.append("mem GiB: device peak bytes in use so far in this process (rows run small to large).")
    return n
