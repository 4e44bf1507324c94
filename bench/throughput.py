"""Throughput of mimjax pre-training on whatever backend JAX finds: train steps of MAE,
GPA-MAE "teacher" and "teacher+feature" (img/s, step time, FLOPs, MFU, memory), the encoder
forward + backward against timm, the masking and the input pipeline alone, and a PyTorch
(timm-layer) MAE / GPA-MAE reference timed in the same run. Columns: bench/README.md.

    bash bench/run.sh                                          # the full run, backend defaults
    python -m bench.throughput --models vit_tiny_patch16 --batch 8 --out-dir /tmp/bench
    python -m bench.throughput --override model.remat=true --tag remat   # record an option's effect

Compilation is excluded (programs are compiled ahead with `.lower().compile()`), every
timed call ends in `jax.block_until_ready`, and warm-up calls are not counted.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to the torch reference
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not __package__:  # `python bench/throughput.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # restart before the heavy imports below, or they would run twice
    from mimjax import procenv

    procenv.setup_process()  # huge-page malloc and CPU fast math unless opted out (recorded in meta)

import jax
import jax.numpy as jnp

from bench import inputs, report, steps
from mimjax import flops
from mimjax.models.layers import ATTENTION_IMPLEMENTATIONS
from mimjax.models.vit import vit_kwargs

SIZES = ("vit_tiny_patch16", "vit_small_patch16", "vit_base_patch16", "vit_large_patch16")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def time_calls(call, warmup: int, n: int) -> list[float]:
    """Seconds of each of `n` calls after `warmup` untimed ones; `call` must block."""
    times = []
    for i in range(warmup + n):
        t = time.perf_counter()
        call()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def summary(times: list[float], batch: int) -> dict:
    ms = [1e3 * t for t in times]
    med = statistics.median(ms)
    return {"step_ms": {"median": round(med, 2), "min": round(min(ms), 2), "max": round(max(ms), 2)},
                "img_per_s": round(batch / (med / 1e3), 2)}


def rates(row: dict, gflop: float, ctx: dict) -> dict:
    """Achieved TFLOP/s from the analytic FLOPs; MFU (accelerators with a known peak) or the
    share of the measured float32 matmul FLOP/s (CPU)."""
    tf = gflop * 1e9 * row["img_per_s"] / 1e12
    row.update(gflop_per_img=round(gflop, 2), tflops=round(tf, 4))
    if ctx["peak"]:
        row["mfu"] = tf * 1e12 / ctx["peak"]
    elif ctx.get("matmul_flops"):
        row["of_matmul"] = tf * 1e12 / ctx["matmul_flops"]
    return row


def memory_gib(compiled) -> float | None:
    """Peak bytes in use on device 0 (`memory_stats`, the process peak so far) where the
    backend has it, else the compiled program's arguments + temporaries + outputs."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return round(stats["peak_bytes_in_use"] / 2 ** 30, 2)
    m = compiled.memory_analysis()
    if m is None:
        return None
    b = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return round(b / 2 ** 30, 2)


def bench_matmul(use_torch: bool, n: int = 2048, reps: int = 5) -> list[dict]:
    """Best-of-`reps` float32 n^3 matmul FLOP/s of XLA (and of torch on the same device)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
    best = min(time_calls(lambda: f(a, a).block_until_ready(), 1, reps))
    rows = [{"library": "jax (XLA)", "dtype": "float32", "gflops": round(2 * n ** 3 / best / 1e9, 1)}]
    if use_torch:
        import torch

        from bench import torch_ref
        dev = torch_device()
        x = torch.randn(n, n, device=dev)
        best = min(time_calls(lambda: (x @ x, torch_ref.sync(dev)), 1, reps))
        rows.append({"library": "torch", "dtype": "float32", "gflops": round(2 * n ** 3 / best / 1e9, 1)})
    return rows


def torch_device() -> str:
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def bench_encoder(args, ctx) -> dict:
    """mimjax ViT vs timm ViT: forward + backward of mean(encoder output), in --dtype (bfloat16:
    mimjax's mixed-precision policy vs timm under torch.autocast; bench/dtype.py pairs both)."""
    a = flops.Arch.from_name(args.encoder_model, img_size=args.img_size)
    gflop = flops.encoder_train_flops(a) / 1e9
    fn, fargs = steps.build_encoder_step(args.encoder_model, args.encoder_batch, args.img_size, args.dtype)
    compiled = fn.lower(*fargs).compile()
    times = time_calls(lambda: jax.block_until_ready(compiled(*fargs)), args.warmup, args.steps)
    row = rates(dict(impl="mimjax", **summary(times, args.encoder_batch)), gflop, ctx)
    x = flops.xla_flops(compiled)
    row["xla_gflop_per_img"] = None if x is None else round(x / args.encoder_batch / 1e9, 2)
    out = {"model": args.encoder_model, "img_size": args.img_size, "batch": args.encoder_batch, "dtype": args.dtype,
           "rows": [row]}
    if ctx["torch"]:
        from bench import torch_ref
        dev = torch_device()
        arch = torch_ref.vit_args(vit_kwargs(args.encoder_model), args.img_size)
        import torch
        step = torch_ref.make_encoder_step(arch, args.encoder_batch, dev,
                                           torch.bfloat16 if args.dtype == "bfloat16" else None)
        times = time_calls(lambda: (step(), torch_ref.sync(dev)), args.warmup, args.steps)
        out["rows"].append(rates(dict(impl=f"timm ({dev})", **summary(times, args.encoder_batch)), gflop, ctx))
        out["speedup_vs_torch"] = row["img_per_s"] / out["rows"][1]["img_per_s"]
    return out


def bench_step(args, ctx, model: str, method: str, teacher_full: bool, attention: str) -> dict:
    c = steps.make_config(method, model, args.batch, args.img_size, args.dtype,
                          [*args.override, f"model.attention={attention}"])
    step, (state, batch, frozen, key) = steps.build_train_step(c, teacher_full)
    t = time.perf_counter()
    compiled = step.lower(state, batch, frozen, key).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def call():
        box[0], m = compiled(box[0], batch, frozen, key)
        jax.block_until_ready((box[0], m))

    times = time_calls(call, args.warmup, args.steps)
    a = flops.Arch.from_config(c)
    gflop = flops.step_flops(a, method, teacher_full)["total"] / 1e9
    x = flops.xla_flops(compiled)
    row = dict(model=model, method=method, teacher="-" if method == "mae" else ("full" if teacher_full else "stop@qk"),
               attention=attention, batch=args.batch, dtype=args.dtype, remat=bool(c.model.remat),
               teacher_block_head=None if method == "mae" else [c.teacher.block, c.teacher.head],
               compile_s=round(compile_s, 1), **summary(times, args.batch),
               xla_gflop_per_img=None if x is None else round(x / args.batch / 1e9, 2))
    rates(row, gflop, ctx)
    row["xla_over_analytic"] = None if x is None else x / args.batch / 1e9 / gflop
    row["mem_gib"] = memory_gib(compiled)
    print(f"  {model} {method} teacher={row['teacher']} attn={attention}: {row['img_per_s']} img/s, "
          f"{row['step_ms']['median']} ms/step, compile {row['compile_s']} s", flush=True)
    return row


def bench_torch_steps(args, models, methods) -> dict:
    """{(model, method): summary} of the PyTorch reference's train step, for mae and
    gpa_teacher. Runs before the JAX steps so that, on a GPU, torch gets its memory before
    XLA's allocator holds it (torch's cache is emptied after each)."""
    import torch

    from bench import torch_ref
    dev, out = torch_device(), {}
    dtype = torch.bfloat16 if dev == "cuda" and args.dtype == "bfloat16" else None
    for model in models:
        for method in (m for m in methods if m in ("mae", "gpa_teacher")):
            c = steps.make_config(method, model, args.batch, args.img_size, args.dtype, args.override)
            arch = torch_ref.vit_args(vit_kwargs(model), args.img_size)
            step = torch_ref.make_train_step(arch, method, args.batch, dev, dtype, block=c.teacher.block,
                                             head=c.teacher.head)
            times = time_calls(lambda step=step: (step(), torch_ref.sync(dev)), args.warmup, args.steps)
            out[model, method] = summary(times, args.batch)
            print(f"  torch {model} {method}: {out[model, method]['img_per_s']} img/s", flush=True)
            if dev == "cuda":
                torch.cuda.empty_cache()
    return out


def attach_torch(rows: list[dict], torch_rows: dict):
    """torch_img_per_s / speedup_vs_torch on the rows the reference matches (the default
    teacher and attention)."""
    for r in rows:
        s = torch_rows.get((r["model"], r["method"]))
        if s and r["teacher"] != "full" and r["attention"] == "auto":
            r.update(torch_img_per_s=s["img_per_s"], torch_step_ms=s["step_ms"],
                     speedup_vs_torch=r["img_per_s"] / s["img_per_s"])


def parse_args(argv=None):
    accel = jax.default_backend() != "cpu"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=SIZES, default=list(SIZES) if accel else ["vit_small_patch16"])
    ap.add_argument("--methods", nargs="+", choices=tuple(steps.METHODS), default=list(steps.METHODS))
    ap.add_argument("--batch", type=int, default=128 if accel else 32, help="train-step batch (one device)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--dtype", default="bfloat16" if accel else "float32", help="model compute dtype")
    ap.add_argument("--warmup", type=int, default=5 if accel else 1, help="untimed calls after compilation")
    ap.add_argument("--steps", type=int, default=20 if accel else 3, help="timed calls")
    ap.add_argument("--teacher", nargs="+", choices=("stop", "full"), default=["stop", "full"],
                    help="GPA teacher: stop after block 9's q,k of one head; full: whole teacher, all heads' "
                         "attention (full runs for gpa_teacher only)")
    ap.add_argument("--attention", nargs="+", choices=ATTENTION_IMPLEMENTATIONS, default=["auto"],
                    help="model.attention of the steps: auto (the model's default: explicit softmax on CPU, "
                    "jax.nn.dot_product_attention elsewhere), explicit, or xla / cudnn (that call forced to "
                    "this implementation)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every step (ml_collections syntax without --config.), "
                    "e.g. model.remat=true, model.scan=true")
    ap.add_argument("--encoder-model", default="vit_small_patch16")
    ap.add_argument("--encoder-batch", type=int, default=32)
    ap.add_argument("--sections", nargs="+", default=["matmul", "encoder", "steps", "masking", "pipeline", "torch"],
                    choices=("matmul", "encoder", "steps", "masking", "pipeline", "torch"))
    ap.add_argument("--pipeline-batch", type=int, default=32)
    ap.add_argument("--pipeline-batches", type=int, default=6)
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--tag", default="", help="suffix of the result file names (e.g. remat)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    dev = jax.devices()[0]
    use_torch = "torch" in args.sections and jax.default_backend() in ("cpu", "gpu")
    versions = {}
    if use_torch:
        try:
            import timm
            import torch
            versions = {"torch": torch.__version__, "timm": timm.__version__}
            torch.set_num_threads(cpu_count())
        except ImportError as e:
            print(f"torch reference skipped: {e}", flush=True)
            use_torch = False
    meta = dict(backend=jax.default_backend(), device=dev.device_kind, device_count=jax.device_count(),
                jax=jax.__version__, **versions, date=datetime.datetime.now().isoformat(timespec="seconds"),
                host=platform.node(), cpu_count=cpu_count(), cpu_model=cpu_model(), overrides=args.override,
                argv=sys.argv[1:], glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                xla_flags=os.environ.get("XLA_FLAGS", ""),
                peak_bf16_flops=flops.peak_flops(dev.device_kind) if dev.platform != "cpu" else None)
    ctx = {"peak": meta["peak_bf16_flops"], "torch": use_torch, "matmul_flops": None}
    result = {"meta": meta, "notes": []}
    print(f"backend {meta['backend']}, device {meta['device']}, {meta['cpu_count']} cores", flush=True)
    if "matmul" in args.sections:
        result["matmul"] = bench_matmul(use_torch)
        ctx["matmul_flops"] = result["matmul"][0]["gflops"] * 1e9
        print(f"matmul: {result['matmul']}", flush=True)
    if "encoder" in args.sections:
        result["encoder"] = bench_encoder(args, ctx)
        print(f"encoder: {[(r['impl'], r['img_per_s']) for r in result['encoder']['rows']]}", flush=True)
    if "steps" in args.sections:
        torch_rows = bench_torch_steps(args, args.models, args.methods) if use_torch else {}
        rows = []
        for model in args.models:
            for method in args.methods:
                variants = [v == "full" for v in args.teacher] if method == "gpa_teacher" else [False]
                for full in variants:
                    rows += [bench_step(args, ctx, model, method, full, att) for att in args.attention]
        attach_torch(rows, torch_rows)
        result["steps"] = rows
    if "masking" in args.sections:
        result["masking"] = inputs.bench_masking(args, result.get("steps", []), time_calls)
    if "pipeline" in args.sections:
        result["pipeline"] = inputs.bench_pipeline(args.img_size, args.pipeline_batch, args.pipeline_batches)
    result["notes"] += inputs.notes(meta, args)
    meta["elapsed_s"] = round(time.perf_counter() - start, 1)
    paths = report.write(result, args.out_dir, report.result_stem(meta) + (f"_{args.tag}" if args.tag else ""))
    print("\n" + report.markdown(result))
    print(f"wrote {paths[0]} and {paths[1]}")
    return result


if __name__ == "__main__":
    main()
