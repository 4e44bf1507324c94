"""How many host CPU cores keep 8 x H100 fed, from the input pipeline's measured rate.

    python -m bench.input_projection --rate torchvision=220 --rate mimjax=330   # img/s per core

A GPU step at a given MFU consumes `gpus x peak x mfu / flops_per_image` images a second
(FLOPs per image of one ViT-B/16 pre-training step from `mimjax.flops.step_flops`; peak:
the dense bf16 peak of `mimjax.flops.peak_flops`); a pipeline that makes `r` images a second
per core needs that over `r` cores. `bench/input.py` prints this table from its measured
per-core rates (wall img/s over the cores it ran on). Linear in cores: an upper bound on
what more cores give when the pipeline stops scaling (threads past ~8-10 cores).
"""
from __future__ import annotations

import argparse
import math

METHODS = (("MAE", "mae"), ("GPA-MAE (teacher masks)", "gpa_teacher"), ("GPA-MAE (teacher + feature head)",
                                                                         "gpa_feature"))


def images_per_second(flops_per_image: float, gpus: int = 8, peak: float = 989e12, mfu: float = 0.5) -> float:
    """Images a second that `gpus` chips at `mfu` of `peak` FLOP/s train on."""
    return gpus * peak * mfu / flops_per_image


def cores_needed(rate_per_core: float, flops_per_image: float, gpus: int = 8, peak: float = 989e12,
                 mfu: float = 0.5) -> float:
    """CPU cores at `rate_per_core` images a second each that feed `images_per_second`."""
    return images_per_second(flops_per_image, gpus, peak, mfu) / rate_per_core


def projection(rates: dict[str, float], model: str = "vit_base_patch16", gpus: int = 8,
               device: str = "H100", mfu: float = 0.5) -> list[dict]:
    """One row per pre-training method: GFLOP per image, images/s the GPUs need, and for
    each pipeline in `rates` (name -> img/s per core) the cores it needs."""
    from mimjax import flops

    arch, peak = flops.Arch.from_name(model), flops.peak_flops(device)
    rows = []
    for label, method in METHODS:
        f = flops.step_flops(arch, method)["total"]
        rows.append({"method": label, "gflop_per_img": f / 1e9, "img_per_s": images_per_second(f, gpus, peak, mfu),
                     "cores": {name: cores_needed(r, f, gpus, peak, mfu) for name, r in rates.items()}})
    return rows


def markdown(rows: list[dict], rates: dict[str, float], gpus: int = 8, device: str = "H100",
             mfu: float = 0.5) -> str:
    names = list(rates)
    out = [f"Cores to feed {gpus} x {device} at {mfu:.0%} MFU, ViT-B/16 (per-core rates: "
           + ", ".join(f"{n} {r:.0f} img/s" for n, r in rates.items()) + "):", "",
           "| method | GFLOP / img (step) | img/s needed | " + " | ".join(f"cores, {n}" for n in names) + " |",
           "|---|---|---|" + "---|" * len(names)]
    for r in rows:
        out.append(f"| {r['method']} | {r['gflop_per_img']:.1f} | {r['img_per_s']:,.0f} | "
                   + " | ".join(f"{math.ceil(r['cores'][n]):,}" for n in names) + " |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", action="append", default=[], help="NAME=IMG_PER_S_PER_CORE (repeatable)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--mfu", type=float, default=0.5)
    args = ap.parse_args(argv)
    if not args.rate:
        ap.error("give the measured rates: --rate NAME=IMG_PER_S_PER_CORE (bench/input.py prints them)")
    rates = {k: float(v) for k, v in (r.split("=", 1) for r in args.rate)}
    print(markdown(projection(rates, gpus=args.gpus, mfu=args.mfu), rates, args.gpus, mfu=args.mfu))


if __name__ == "__main__":
    main()
