"""float32 vs bf16 on this machine: the ViT encoder forward + backward of mimjax (`model.dtype`
float32 and bfloat16, the mixed-precision policy of models/precision.py) against timm (float32
and `torch.autocast` bf16), and the 2048^3 matmul of each library in both dtypes.

    python -m bench.dtype                                   # all legs, ViT-S/16 at batch 32
    python -m bench.dtype --jax-python .venv/bin/python /tmp/venv312/bin/python --onednn
    python -m bench.dtype --leg jax                         # one leg, prints its JSON

Each leg (a JAX installation, with or without `--xla_cpu_experimental_onednn_fusion_type=dot`;
timm) runs in its own process; inside it the two dtypes are compiled first, then timed
alternately (A B B A ...) round after round, so that a machine whose load changes (a shared
CI host) slows both alike: read the per-round ratios as much as the medians. Writes
bench/results/dtype_<backend>_<n>cores.{json,md} with the CPU model, its bf16 flags
(avx512_bf16, amx_bf16) and the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

if not __package__:  # `python bench/dtype.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONEDNN = "--xla_cpu_experimental_onednn_fusion_type=dot"


def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": model, "cores": cores,
            "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx_ne_convert", "bf16"})}


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def alternate(calls: dict, rounds: int, warmup: int = 1) -> dict:
    """{name: seconds per round} of blocking no-argument `calls`, timed alternately; the order
    flips every round (A B, B A, ...)."""
    names = list(calls)
    for _ in range(warmup):
        for n in names:
            calls[n]()
    out = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            calls[n]()
            out[n].append(time.perf_counter() - t)
    return out


def summarise(times: dict, batch: int) -> dict:
    rows = {n: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
                "all_s": [round(x, 3) for x in t], "img_per_s": round(batch / statistics.median(t), 2)}
            for n, t in times.items()}
    a, b = list(times)
    rows["ratio_per_round"] = [round(y / x, 3) for x, y in zip(times[a], times[b])]  # b time / a time
    return rows


def hlo_counts(text: str) -> dict:
    """Converts and products of a compiled program's HLO text, by element types, and the custom
    fusions XLA:CPU formed (__ynn_fusion, __onednn_fusion, ...)."""
    import collections
    import re

    types = {m.group(1): m.group(2) for m in re.finditer(r"%([\w.\-]+) = (\w+)\[", text)}
    dots, converts = collections.Counter(), collections.Counter()
    for m in re.finditer(r"= (\w+)\[[^\]]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)", text):
        dots[f"{types.get(m.group(2))} x {types.get(m.group(3))} -> {m.group(1)}"] += 1
    for m in re.finditer(r"= (\w+)\[[^\]]*\]\S* convert\(%([\w.\-]+)\)", text):
        converts[f"{types.get(m.group(2))} -> {m.group(1)}"] += 1
    return {"converts": dict(converts), "dots": dict(dots),
            "custom_fusions": dict(collections.Counter(re.findall(r'"kind":"(__\w+)"', text)))}


def leg_jax(args) -> dict:
    from mimjax import procenv

    procenv.setup_process()  # huge pages + CPU fast math, as the trainer (may re-execute)
    import jax
    import jax.numpy as jnp

    from bench import steps

    compiled, fargs = {}, {}
    for dt in ("float32", "bfloat16"):
        fn, a = steps.build_encoder_step(args.model, args.batch, args.img_size, dt)
        t = time.perf_counter()
        compiled[dt] = fn.lower(*a).compile()
        fargs[dt] = a
        print(f"  jax {jax.__version__} {dt}: compiled in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    calls = {dt: (lambda dt=dt: jax.block_until_ready(compiled[dt](*fargs[dt]))) for dt in compiled}
    hlo = {dt: hlo_counts(c.as_text()) for dt, c in compiled.items()}
    enc = summarise(alternate(calls, args.rounds), args.batch)
    n = 2048
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = {"float32": jax.jit(lambda a, b: a @ b).lower(x, x).compile()}
    xb = x.astype(jnp.bfloat16)
    mm["bfloat16"] = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32)).lower(xb, xb).compile()
    mcalls = {"float32": lambda: mm["float32"](x, x).block_until_ready(),
              "bfloat16": lambda: mm["bfloat16"](xb, xb).block_until_ready()}
    mt = alternate(mcalls, 5)
    return {"impl": "mimjax", "jax": jax.__version__, "python": platform.python_version(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "encoder": enc, "hlo": hlo,
            "matmul_gflops": {k: round(2 * n ** 3 / min(v) / 1e9, 1) for k, v in mt.items()}}


def leg_torch(args) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm
    import torch

    from bench import torch_ref
    from mimjax.models.vit import vit_kwargs

    torch.set_num_threads(cpu_info()["cores"])
    arch = torch_ref.vit_args(vit_kwargs(args.model), args.img_size)
    stepf = {"float32": torch_ref.make_encoder_step(arch, args.batch),
             "bfloat16": torch_ref.make_encoder_step(arch, args.batch, dtype=torch.bfloat16)}
    enc = summarise(alternate(stepf, args.rounds), args.batch)
    n = 2048
    a = torch.randn(n, n)
    ab = a.bfloat16()
    mt = alternate({"float32": lambda: a @ a, "bfloat16": lambda: ab @ ab}, 5)
    return {"impl": "timm", "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "encoder": enc, "matmul_gflops": {k: round(2 * n ** 3 / min(v) / 1e9, 1) for k, v in mt.items()}}


def flag_known(python: str, flag: str) -> bool:
    """Whether this JAX's XLA accepts `flag` (an unknown XLA flag aborts the process)."""
    env = {**os.environ, "XLA_FLAGS": flag}
    r = subprocess.run([python, "-c", "import jax; jax.devices()"], env=env, capture_output=True, text=True,
                       timeout=300)
    return r.returncode == 0


def run_leg(python: str, leg: str, args, xla_flags: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    cmd = [python, "-m", "bench.dtype", "--leg", leg, "--model", args.model, "--batch", str(args.batch),
           "--img-size", str(args.img_size), "--rounds", str(args.rounds)]
    before = loadavg()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    sys.stderr.write(r.stderr[-2000:] if r.returncode else "")
    if r.returncode:
        return {"leg": leg, "python_exe": python, "error": r.stderr.strip().splitlines()[-1:], "rc": r.returncode}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out.update(python_exe=python, loadavg_before=before, loadavg_after=loadavg())
    return out


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"# float32 vs bf16, {m['model']} forward + backward, batch {m['batch']}, {m['img_size']} px",
             "", f"{m['date']}, {m['cpu_model']} ({m['cores']} cores; bf16 flags: "
             f"{', '.join(m['bf16_flags']) or 'none'}). Load average during the run: {m['loadavg']} "
             f"({m['note']}). Median of {m['rounds']} alternating rounds; ratio = bf16 time / float32 time "
             "per round.", "",
             "| implementation | float32 s | bf16 s | bf16 speed-up | per-round bf16/f32 | vs timm float32 "
             "| matmul f32 / bf16 GFLOP/s |", "|---|---|---|---|---|---|---|"]
    timm = next((r for r in result["legs"] if r.get("impl") == "timm" and "encoder" in r), None)
    base = timm["encoder"]["float32"]["median_s"] if timm else None
    for r in result["legs"]:
        if "encoder" not in r:
            lines.append(f"| {r.get('leg')} ({r.get('python_exe')}) | failed: {r.get('error')} | | | | | |")
            continue
        e = r["encoder"]
        if r["impl"] == "timm":
            name = f"timm {r['timm']}, torch {r['torch']} (bf16: autocast), Python {r['python']}"
        else:
            flags = " + onednn dot fusion" if ONEDNN in r["xla_flags"] else ""
            name = f"{r.get('label', 'mimjax')}, jax {r['jax']}{flags}, Python {r['python']}"
        f32, b16 = e["float32"]["median_s"], e["bfloat16"]["median_s"]
        vs = f"{base / f32:.2f}x / {base / b16:.2f}x" if base else "-"
        lines.append(f"| {name} | {f32:.2f} | {b16:.2f} | {f32 / b16:.2f}x | {e['ratio_per_round']} | {vs} | "
                     f"{r['matmul_gflops']['float32']} / {r['matmul_gflops']['bfloat16']} |")
    lines += ["", "vs timm float32: timm's float32 time / this row's float32 and bf16 times (> 1: faster)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--leg", choices=("jax", "torch"), help="run one leg in this process and print its JSON")
    ap.add_argument("--jax-python", nargs="+", default=[sys.executable],
                    help="Python executables whose JAX to time (each its own leg)")
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--onednn", action="store_true", help=f"also time each JAX with {ONEDNN} where its XLA knows it")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--model", default="vit_small_patch16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--note", default="a shared machine: other jobs ran beside this one",
                    help="what the load was like (recorded)")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--from-legs", nargs="+", metavar="JSON",
                    help="assemble the result from saved legs (a leg's JSON or an earlier result's) instead of running")
    args = ap.parse_args(argv)
    if args.leg:
        before = loadavg()
        out = leg_jax(args) if args.leg == "jax" else leg_torch(args)
        out.setdefault("loadavg_before", before)
        out.setdefault("loadavg_after", loadavg())
        print(json.dumps(out))
        return None
    import datetime

    legs = []
    start = loadavg()
    for path in args.from_legs or ():
        with open(path) as f:
            saved = json.load(f)
        legs += [r for r in saved["legs"] if "encoder" in r] if "legs" in saved else [saved]
    for py in [] if args.from_legs else args.jax_python:
        legs.append(run_leg(py, "jax", args))
        if args.onednn:
            if flag_known(py, ONEDNN):
                legs.append(run_leg(py, "jax", args, ONEDNN))
            else:
                legs.append({"leg": "jax", "python_exe": py, "error": [f"XLA does not know {ONEDNN}"], "rc": None})
        print(json.dumps(legs[-1])[:300], file=sys.stderr, flush=True)
    if not args.no_torch and not args.from_legs:
        legs.append(run_leg(args.torch_python, "torch", args))
    rounds = max((len(r["encoder"]["float32"]["all_s"]) for r in legs if "encoder" in r), default=args.rounds)
    if args.from_legs:  # the load now says nothing about when the legs ran: theirs, where recorded
        start = [r.get("loadavg_before") for r in legs if r.get("loadavg_before")] or None
    meta = dict(cpu_info(), model=args.model, batch=args.batch, img_size=args.img_size, rounds=rounds,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                host=platform.node(), loadavg=[start, None if args.from_legs else loadavg()], note=args.note)
    result = {"meta": meta, "legs": legs}
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"dtype_cpu_{meta['cores']}cores{('_' + args.tag) if args.tag else ''}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(stem + ".md", "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md")
    return result


if __name__ == "__main__":
    main()
