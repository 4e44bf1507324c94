"""Benchmark results: the JSON file and its Markdown tables (see bench/README.md for the
columns).

    python -m bench.report bench/results/throughput_cpu_2cores.json   # re-print the tables
"""
from __future__ import annotations

import json
import os
import re
import sys


def _fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _pct(v):
    return None if v is None else f"{100 * v:.3g}%"


def _short(model: str) -> str:
    return model.removeprefix("vit_").removesuffix("_patch16")


def _sig(v):
    return None if v is None else f"{v:.3g}"


def markdown(result: dict) -> str:
    """All tables of one result (missing sections are left out)."""
    m = result["meta"]
    out = [f"# mimjax throughput: {m['backend']} / {m['device']}",
           (f"{m['date']}; jax {m['jax']}, torch {m.get('torch') or '-'}, timm {m.get('timm') or '-'}; "
            f"{m['device_count']} device(s), {m['cpu_count']} CPU cores ({m.get('cpu_model', '?')}); "
            f"overrides: {', '.join(m.get('overrides') or []) or 'none'}; "
            f"GLIBC_TUNABLES: {m.get('glibc_tunables') or 'none'}; run took {m.get('elapsed_s', '?')} s.")]
    mm = result.get("matmul")
    if mm:
        out += ["", "## float32 matmul 2048^3", _table(
            ["library", "dtype", "GFLOP/s"],
            [[r["library"], r["dtype"], r["gflops"]] for r in mm])]
    enc = result.get("encoder")
    if enc:
        out += ["", (f"## Encoder forward + backward ({enc['model']}, {enc['img_size']} px, batch {enc['batch']}, "
                     f"{enc['dtype']}, loss = mean output)"), _table(
            ["impl", "img/s", "step ms (median)", "min", "max", "GFLOP/img", "XLA GFLOP/img", "TFLOP/s",
             "of matmul FLOP/s", "MFU"],
            [[r["impl"], r["img_per_s"], r["step_ms"]["median"], r["step_ms"]["min"], r["step_ms"]["max"],
              r["gflop_per_img"], r.get("xla_gflop_per_img"), _sig(r["tflops"]), _pct(r.get("of_matmul")),
              _pct(r.get("mfu"))] for r in enc["rows"]])]
        line = []
        if enc.get("speedup_vs_torch"):
            line.append(f"mimjax / timm: **{enc['speedup_vs_torch']:.2f}x**")
        if enc["rows"][0].get("of_matmul") is not None:
            line.append(f"mimjax at **{_pct(enc['rows'][0]['of_matmul'])}** of the XLA float32 matmul FLOP/s")
        if line:
            out.append("\n" + "; ".join(line) + " (issue #7 CPU targets: >= 1.3x and >= 35%).")
    steps = result.get("steps")
    if steps:
        out += ["", "## Train step (synthetic on-device batch)", _table(
            ["model", "method", "teacher", "attn", "batch", "dtype", "img/s", "step ms (median)", "min", "max",
             "compile s", "GFLOP/img", "XLA/analytic", "TFLOP/s", "MFU or of-matmul", "mem GiB", "mask us",
             "mask share", "torch img/s", "mimjax/torch"],
            [[_short(r["model"]) + (" +remat" if r.get("remat") else ""), r["method"], r["teacher"], r["attention"],
              r["batch"], r["dtype"], r["img_per_s"], r["step_ms"]["median"], r["step_ms"]["min"],
              r["step_ms"]["max"], r["compile_s"], r["gflop_per_img"],
              None if r.get("xla_over_analytic") is None else f"{r['xla_over_analytic']:.3f}", _sig(r["tflops"]),
              _pct(r.get("mfu") if r.get("mfu") is not None else r.get("of_matmul")), r.get("mem_gib"),
              r.get("mask_us"), _pct(r.get("mask_share")), r.get("torch_img_per_s"),
              None if r.get("speedup_vs_torch") is None else f"{r['speedup_vs_torch']:.2f}x"]
             for r in steps])]
    mk = result.get("masking")
    if mk:
        out += ["", "## Masking alone (jitted `train.make_mask`, per batch)", _table(
            ["strategy", "batch", "patches", "us/batch"],
            [[r["strategy"], r["batch"], r["num_patches"], r["us_per_batch"]] for r in mk])]
    pl = result.get("pipeline")
    if pl:
        out += ["", "## Input pipeline alone (decode + MAE augmentation, this host)", _table(
            ["source", "img px", "batch", "threads", "img/s"],
            [[r["source"], r["img_size"], r["batch"], r["threads"], r["img_per_s"]] for r in pl])]
    if result.get("notes"):
        out += ["", "Notes:"] + [f"- {n}" for n in result["notes"]]
    return "\n".join(out) + "\n"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


def result_stem(meta: dict) -> str:
    """throughput_<backend>_<device>: the device kind (accelerators) or '<n>cores' (CPU)."""
    device = f"{meta['cpu_count']}cores" if meta["backend"] == "cpu" else slug(meta["device"])
    return f"throughput_{meta['backend']}_{device}"


def write(result: dict, out_dir: str, stem: str | None = None) -> tuple[str, str]:
    """Writes <out_dir>/<stem>.json and .md; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = stem or result_stem(result["meta"])
    paths = os.path.join(out_dir, stem + ".json"), os.path.join(out_dir, stem + ".md")
    with open(paths[0], "w") as f:
        json.dump(result, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(markdown(result))
    return paths


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f)))
