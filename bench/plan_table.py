"""The pre-flight table: every ImageNet recipe planned (`mimjax plan --json`) for GPU hosts and
TPU slices, each plan in its own process, appended to bench/results/plan.jsonl as it lands;
`--markdown` writes bench/results/plan.md from whatever is there.

    python -m bench.plan_table                       # all rows not yet in plan.jsonl
    python -m bench.plan_table --targets h100x8 --recipes gpa_mae.py:vit_base_patch16,feature
    python -m bench.plan_table --markdown

GPU targets need JAX's CUDA plugin (`pip install -e ".[gpu]" -c requirements.txt`, ~5.5 GB),
TPU targets libtpu (`pip install -e ".[tpu]" -c requirements.txt`); `--python` picks the interpreter that has them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench.teacher import cpu_model

RECIPES = ("gpa_mae.py:vit_base_patch16,feature", "gpa_mae.py:vit_base_patch16", "mae.py:vit_base_patch16",
           "simmim.py:vit_base_patch16", "mae.py:vit_large_patch16", "gpa_mae.py:vit_large_patch16,feature",
           "gpa_mae.py:vit_large_patch16", "simmim.py:vit_large_patch16")
TARGETS = ("h100x8", "v5e-256", "h200x8", "v4-32", "v5p-128")
EPOCHS = 200  # the GPA paper's pre-training length
IMAGENET = 1_281_167
OUT = os.path.join(os.path.dirname(__file__), "results", "plan.jsonl")


def done() -> set:
    if not os.path.exists(OUT):
        return set()
    with open(OUT) as f:
        return {(r["recipe"], r["target"]) for r in map(json.loads, f)}


def run_one(python: str, recipe: str, target: str, timeout: int) -> dict:
    cmd = [python, "-m", "mimjax.cli", "plan", "--config", f"configs/{recipe}", "--target", target, "--json"]
    t0, load = time.time(), os.getloadavg()[0]  # the 1-minute load at the start: a shared machine slows the compiler
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
    row = {"recipe": recipe, "target": target, "exit": p.returncode, "wall_s": round(time.time() - t0, 1),
           "host_cpu": cpu_model(), "host_cores": os.cpu_count(), "host_load": round(load, 2)}
    if p.stdout.strip().startswith("{"):
        row["plan"] = json.loads(p.stdout)
    else:
        row["error"] = (p.stderr.strip().splitlines() or [""])[-1]
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| recipe | target | fits | memory a device | setting chosen | FLOPs/step a device | img/s at 50% MFU "
             f"| hours for {EPOCHS} epochs | compile |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("plan")
        if p is None:
            lines.append(f"| `{r['recipe']}` | {r['target']} | error: {r.get('error', '')} | | | | | | |")
            continue
        s, mem = p["settings"], p["memory_bytes"]["total"] / 2 ** 30
        ips = p["img_per_s"]["50%"]
        scanned = ", scanned" if s.get("scan") else ""
        setting = f"remat={s['remat']}, accum={s['accum_steps']}{scanned}" if p["fits"] else (
            f"none as asked; fits with remat={p['suggestion']['remat']}, accum={p['suggestion']['accum_steps']}"
            if p["suggestion"] else "none")
        lines.append(f"| `{r['recipe']}` | {r['target']} | {'yes' if p['fits'] else 'no'} | {mem:.1f} of "
                     f"{p['capacity_bytes'] / 2 ** 30:.1f} GiB | {setting} | {p['flops_per_step'] / 1e12:.1f} T "
                     f"({'XLA' if p['flops_source'] == 'xla' else 'analytic'}) | {ips:,.0f} | "
                     f"{EPOCHS * IMAGENET / ips / 3600:.1f} | {compile_cell(r)} |")
    cpus = sorted({f"{r['host_cpu']} ({r['host_cores']} cores)" for r in rows})
    return "\n".join(lines) + (f"\n\nCompiled on: {'; '.join(cpus)}. Memory: XLA's memory analysis of the step "
                               "(arguments + temporaries + outputs - donated + code) a device; GPU capacity is 90% of "
                               "the device (XLA_PYTHON_CLIENT_MEM_FRACTION as `mimjax` sets it); a setting fits within "
                               "90% of that. img/s: the whole batch over all devices at 50% of the bf16 peak. Compile: "
                               "seconds of compiling on a shared machine (newer rows record its load in plan.jsonl), "
                               "and this host's peak memory where recorded.\n")


def compile_cell(row: dict) -> str:
    """The compile time and the host's peak memory (older rows: not recorded)."""
    p = row["plan"]
    peak = p.get("host_peak_bytes")
    return f"{p['compile_s']:.0f} s" + ("" if peak is None else f", {peak / 2 ** 30:.1f} GiB RAM")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="*", default=RECIPES)
    ap.add_argument("--targets", nargs="*", default=TARGETS)
    ap.add_argument("--python", default=sys.executable, help="interpreter for TPU targets")
    ap.add_argument("--gpu_python", default=sys.executable, help="interpreter with the CUDA plugin")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    if not args.markdown:
        have = done()
        for target in args.targets:
            for recipe in args.recipes:
                if (recipe, target) in have:
                    continue
                python = args.gpu_python if target[0] in "ah" or "xh" in target or "xa" in target else args.python
                row = run_one(python, recipe, target, args.timeout)
                with open(OUT, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(recipe, target, row["exit"], row["wall_s"], flush=True)
    with open(OUT) as f:
        rows = [json.loads(line) for line in f]
    with open(OUT.replace(".jsonl", ".md"), "w") as f:
        f.write(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
