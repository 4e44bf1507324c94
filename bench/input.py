"""Host input pipeline, mimjax against torchvision, side by side, in wall time.

    python -m bench.input --workers 2                   # the full bench: 3 rounds, both sizes (~12 min on 2 cores)
    python -m bench.input --workers 2 --sizes 500x375 --rounds 1 --batches 4 --images 256   # a smoke run
    python -m bench.input --randaugment                 # RandAugment's cost per image only (~1 min)
    python -m bench.input_profile                       # CPU ms per image by stage (bench/input_profile.py)

The same JPEGs (cut from scikit-image's bundled photos, quality 90, 10 class folders; at
ImageNet's typical 500x375 and at 2000x1500) and the same augmentation (RandomResizedCrop
224, scale (0.2, 1), ratio (3/4, 4/3), bicubic; horizontal flip; ImageNet mean/std) through:

- torchvision: `ImageFolder` + `DataLoader(num_workers=W)` (a shuffling sampler that runs
  past one epoch), PIL decode, `RandomResizedCrop`, `RandomHorizontalFlip`, `ToTensor`,
  `Normalize` (float32 batches);
- mimjax: `mimjax.data.make_iterator` with W grain reader threads, on the folder and on the
  same images prepared as ArrayRecord (`mimjax prepare imagenet --folder`); `uint8` is what
  the trainer gets (DevicePrefetcher normalises on the device), `float32` (not run by
  default) normalises on the host as torchvision does.

Each run is its own process, the implementations alternating in order from round to round,
and times `--batches` batches (default 32 x 64 = 2048 images) after a first one (worker
start-up excluded). Reported per size: wall img/s, best and median of the rounds; img/s
per core = wall img/s / the cores this process may use (on a quiet machine, what a host
gets per core); and CPU ms per image (all of the pipeline's processes and threads, the
robust number on a shared machine). Then the pixel difference of mimjax's JPEG crops from
torchvision's (PIL decode + crop + bicubic resize) for the same boxes, and the cores
8 x H100 would need (bench/input_projection.py) from the median per-core rates on 500x375.
Results: bench/results/input_cpu_<n>cores.{json,md}.

`--randaugment` measures what fine-tuning's RandAugment (rand-m9-mstd0.5-inc1, on the
224 px crop) adds per image, one thread, mimjax's against timm's on the same crops, and
the pipeline with it (impl mimjax_folder_uint8_randaugment, also a choice of --impls):
bench/results/input_randaugment_cpu_<n>cores.{json,md}.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import input_projection

IMPLS = ("torchvision", "mimjax_folder_uint8", "mimjax_arrayrecord_uint8", "mimjax_folder_float32")
DEFAULT_IMPLS = IMPLS[:3]
SIZES = ("500x375", "2000x1500")
RANDAUGMENT_IMPL = "mimjax_folder_uint8_randaugment"
SIZE, SCALE = 224, (0.2, 1.0)
RANDAUGMENT = "rand-m9-mstd0.5-inc1"  # MAE's fine-tuning


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_dataset(root: str, n: int, size=(500, 375), classes: int = 10, seed: int = 0):
    """n JPEGs of `size` in `classes` class folders: random crops of the bundled photos."""
    from PIL import Image

    from mimjax.data.images import to_rgb_uint8
    from mimjax.data.sources import EMBEDDED_PHOTOS, _skimage_dir

    photos = []
    for name in EMBEDDED_PHOTOS:
        with Image.open(os.path.join(_skimage_dir(), name)) as im:
            photos.append(to_rgb_uint8(im))
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        d = os.path.join(root, f"class_{i % classes:02d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(p[top:top + ch, left:left + cw]).resize(size, Image.BICUBIC).save(
            os.path.join(d, f"img_{i:05d}.JPEG"), quality=90)


def save(base: str, res: dict, text: str):
    """`res` as base.json, its markdown `text` as base.md (and on stdout)."""
    os.makedirs(os.path.dirname(base), exist_ok=True)
    for ext, body in (("json", json.dumps(res, indent=1)), ("md", text)):
        with open(f"{base}.{ext}", "w") as f:
            f.write(body)
    print(text)


# --- Children: one implementation per process ---------------------------------------------
def cpu_seconds(pids) -> float:
    """User + system CPU seconds of processes (all their threads): this process by its own
    clock (`time.process_time`, ns), the others from /proc (clock ticks: 10 ms; a tick
    would read a short run of this process as 0)."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        if pid == os.getpid():
            total += time.process_time()
            continue
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def best_ms(fn, items, reps: int) -> float:
    """CPU ms of this thread per item (`time.thread_time`: other processes on a shared
    machine do not count), best of `reps` passes of fn over items."""
    best = float("inf")
    for _ in range(reps):
        t = time.thread_time()
        for x in items:
            fn(x)
        best = min(best, (time.thread_time() - t) / len(items))
    return 1e3 * best


def timed(next_batch, pids, batch: int, batches: int) -> dict:
    """img/s (wall) and CPU ms per image (all the pipeline's processes and threads) over
    `batches` batches; on a shared machine the CPU cost per image is the robust number."""
    c, t = cpu_seconds(pids), time.perf_counter()
    for _ in range(batches):
        next_batch()
    wall, cpu = time.perf_counter() - t, cpu_seconds(pids) - c
    n = batch * batches
    return {"img_per_s": n / wall, "cpu_ms_per_img": 1e3 * cpu / n, "cores_busy": cpu / wall}


def torchvision_transform():
    """torchvision's ImageNet training transform (PIL image -> normalised float32 tensor),
    with torch on one thread per process, as DataLoader workers run it."""
    import torch
    from torchvision import transforms

    from mimjax.data.augment import IMAGENET_MEAN, IMAGENET_STD

    torch.set_num_threads(1)
    return transforms.Compose([
        transforms.RandomResizedCrop(SIZE, scale=SCALE, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def run_torchvision(folder: str, workers: int, batch: int, batches: int) -> dict:
    import torch
    from torchvision import datasets

    ds = datasets.ImageFolder(folder, torchvision_transform())
    sampler = torch.utils.data.RandomSampler(ds, num_samples=batch * (batches + 1))  # epochs back to back
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
    return timed(lambda: next(it), pids, batch, batches)


def run_mimjax(source: str, workers: int, batch: int, batches: int, uint8: bool, randaugment: str = "") -> dict:
    import ml_collections

    from mimjax import data

    cfg = ml_collections.ConfigDict(dict(source=source[0], folder=source[1], split="train", name="", data_dir="",
                                         manual_dir="", synthetic_size=1))
    it = data.make_iterator(cfg, img_size=SIZE, global_batch_size=batch, seed=0, num_threads=workers,
                            randaugment=randaugment)
    it.host_uint8 = uint8
    b = next(it)
    assert b["image"].dtype == (np.uint8 if uint8 else np.float32)
    return timed(lambda: next(it), [os.getpid()], batch, batches)


def child(args) -> dict:
    impl, d = args.child, args.dir
    if impl == "torchvision":
        r = run_torchvision(os.path.join(d, "folder"), args.workers, args.batch, args.batches)
    else:
        kind = impl.split("_")[1]
        source = ("folder", os.path.join(d, "folder")) if kind == "folder" else \
            (f"arrayrecord:{os.path.join(d, 'arrayrecord')}", "")
        r = run_mimjax(source, args.workers, args.batch, args.batches, "_uint8" in impl,
                       RANDAUGMENT if impl.endswith("_randaugment") else "")
    return {"impl": impl, **r}


# --- Pixel differences ---------------------------------------------------------------------
def pixel_difference(d: str, sizes, draws: int = 200) -> list[dict]:
    """mimjax's JPEG crop (`augment.decode_jpeg_crop`: libjpeg-turbo, DCT scaling where the
    crop is >= 448 px, OpenCV's resize) against torchvision's `F.resized_crop(PIL decode)`
    for the same boxes, on the first 20 JPEGs of each size's set (`d/<size>/folder`)."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    from mimjax.data import augment

    rows = []
    for label in sizes:
        folder = os.path.join(d, label, "folder", "class_00")
        files = sorted(os.listdir(folder))[:20]
        diffs, scaled, rng = [], 0, np.random.default_rng(0)
        for i in range(draws):
            with open(os.path.join(folder, files[i % len(files)]), "rb") as fh:
                data = fh.read()
            pil = Image.open(io.BytesIO(data)).convert("RGB")
            box = augment.crop_box(rng, pil.height, pil.width, SCALE)
            ours = augment.decode_jpeg_crop(data, pil.height, pil.width, box, SIZE).astype(np.int16)
            ref = np.asarray(F.resized_crop(pil, *box, [SIZE, SIZE], InterpolationMode.BICUBIC)).astype(np.int16)
            f = augment.dct_factor(box[2], box[3], SIZE)
            scaled += f > 1
            diffs.append((f, np.abs(ours - ref)))
        for name, sel in (("all crops", lambda f: True), ("DCT-scaled crops", lambda f: f > 1),
                          ("full-size decode", lambda f: f == 1)):
            ds = [x for f, x in diffs if sel(f)]
            if ds:
                a = np.stack(ds)
                rows.append({"images": label, "crops": name, "n": len(ds), "share_dct_scaled": scaled / draws,
                             "mean_abs_diff": float(a.mean()), "p99_abs_diff": float(np.percentile(a, 99)),
                             "max_abs_diff": int(a.max()), "equal_pixels": float((a == 0).mean())})
    return rows


def randaugment_cost(d: str, n: int = 200) -> dict:
    """CPU ms per image, one thread, of RandAugment on 224 px training crops of the 500x375
    JPEGs: mimjax's (`RandAugment(spec)(crop uint8, rng)`, array in and out) and timm's
    (`rand_augment_transform` with MAE's hparams, PIL image in and out, as in timm's
    transform); the crop itself (decode, crop, resize, flip) for scale. Best of 3 x n."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    from mimjax.data import augment, images
    from mimjax.data.randaugment import FILL, RandAugment

    folder = os.path.join(d, "folder", "class_00")
    datas = [open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))[:8]]
    rng = np.random.default_rng(0)
    crops = [augment.train_crop_uint8(b, SIZE, rng, (0.08, 1.0), decode=images.decode) for b in datas]
    pil_crops = [Image.fromarray(np.ascontiguousarray(c)) for c in crops]
    ours = RandAugment(RANDAUGMENT)
    theirs = rand_augment_transform(RANDAUGMENT, {"translate_const": int(SIZE * 0.45), "img_mean": FILL,
                                                  "interpolation": Image.BICUBIC})
    row = {"spec": RANDAUGMENT, "images": "500x375", "n": n, "timm_errors": 0}

    def timm_op(i):  # Pillow 13 refuses posterize to 0 bits (PosterizeIncreasing at magnitude >= 10)
        try:
            theirs(pil_crops[i % 8])
        except ValueError:
            row["timm_errors"] += 1

    random.seed(0)
    np.random.seed(0)
    for name, fn in (("crop", lambda i: augment.train_crop_uint8(datas[i % 8], SIZE, rng, (0.08, 1.0),
                                                                 decode=images.decode)),
                     ("mimjax", lambda i: ours(crops[i % 8], rng)), ("timm", timm_op)):
        row[f"{name}_ms"] = best_ms(fn, range(n), 3)
    return row


def randaugment_markdown(res: dict) -> str:
    m, r = res["meta"], res["per_image"]
    out = [f"# RandAugment {r['spec']} on the host ({m['cores']} cores)",
           f"{m['date']}; CPU: {m['cpu']}; Pillow {m['pillow']}, timm {m['timm']}; load average at the end: "
           f"{', '.join(f'{x:.1f}' for x in res['load_average'])} (CPU time per image holds on a shared machine; "
           "the pipeline's wall img/s below does not).", "",
           f"CPU ms per image, one thread, best of 3 x {r['n']} 224 px crops of {r['images']} JPEGs:", "",
           "| training crop (decode, crop, resize, flip) | RandAugment, mimjax (uint8 array in/out) | RandAugment, timm (PIL in/out) |",
           "|---|---|---|", f"| {r['crop_ms']:.2f} | {r['mimjax_ms']:.2f} | {r['timm_ms']:.2f} |", "",
           f"timm raised ValueError on {r['timm_errors']} of {3 * r['n']} images (ImageOps.posterize to 0 bits, "
           "which Pillow 13 refuses; mimjax gives black, as older Pillow did)."]
    if res.get("summary"):
        out += ["", f"The pipeline ({m['workers']} grain threads, batch {m['batch']}, {m['batches']} batches after one, "
                "uint8 batches; one round each):", "", "| pipeline | CPU ms / img | img/s wall |", "|---|---|---|"]
        for impl, s in res["summary"].items():
            out.append(f"| {impl} | {s['cpu_ms_per_img']:.2f} | {s['img_per_s']:.1f} |")
    return "\n".join(out) + "\n"


def run_randaugment(args, base: str):
    """--randaugment: `randaugment_cost`, then the folder pipeline without and with it."""
    import PIL
    import timm

    with tempfile.TemporaryDirectory(prefix="bench_input_") as d:
        write_dataset(os.path.join(d, "folder"), args.images)
        per_image = randaugment_cost(d)
        summary = {}
        for impl in ("mimjax_folder_uint8", RANDAUGMENT_IMPL):
            summary[impl] = run_mimjax(("folder", os.path.join(d, "folder")), args.workers, args.batch, args.batches,
                                       True, RANDAUGMENT if impl == RANDAUGMENT_IMPL else "")
    res = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu": cpu_model(), "cores": cores(),
                    "workers": args.workers, "batch": args.batch, "batches": args.batches, "pillow": PIL.__version__,
                    "timm": timm.__version__},
           "load_average": os.getloadavg(), "per_image": per_image, "summary": summary}
    save(base, res, randaugment_markdown(res))


# --- Parent ----------------------------------------------------------------------------------
def summarize(rates: list[float], cpu_ms: list[float], n_cores: int) -> dict:
    """Wall img/s of the rounds -> best, median, median per core; CPU ms per image median."""
    med = statistics.median(rates)
    return {"rounds": rates, "best": max(rates), "median": med, "per_core": med / n_cores,
            "cpu_ms_per_img": cpu_ms, "cpu_ms_median": statistics.median(cpu_ms)}


def markdown(res: dict) -> str:
    m = res["meta"]
    out = [f"# Host input pipeline: mimjax vs torchvision ({m['cores']} cores)",
           f"{m['date']}; CPU: {m['cpu']} ({m['cores']} cores usable, {m['workers']} workers each); "
           f"{m['images']} JPEGs per size, batch {m['batch']}, {m['batches']} timed batches "
           f"({m['batch'] * m['batches']} images) after one, {m['rounds']} rounds alternating; "
           f"torch {m['torch']}, torchvision {m['torchvision']}, grain {m['grain']}, Pillow {m['pillow']}, "
           f"simplejpeg {m['simplejpeg']}, OpenCV {m['opencv']}; run took {m['seconds']:.0f} s.",
           f"Load average at the end: {', '.join(f'{x:.1f}' for x in res['load_average'])}."]
    for size, impls in res["summary"].items():
        tv = impls.get("torchvision")
        out += ["", f"## {size} JPEGs", "",
                "| pipeline | img/s wall, best | median | per round | img/s per core (median) | vs torchvision "
                "(median) | CPU ms / img (median) | img/s per busy core |", "|---|---|---|---|---|---|---|---|"]
        for impl, x in impls.items():
            vs = f"{x['median'] / tv['median']:.2f}x" if tv else "-"
            out.append(f"| {impl} | {x['best']:.1f} | {x['median']:.1f} | {', '.join(f'{v:.0f}' for v in x['rounds'])} "
                       f"| {x['per_core']:.1f} | {vs} | {x['cpu_ms_median']:.2f} | {1e3 / x['cpu_ms_median']:.0f} |")
    if res.get("pixels"):
        out += ["", "Pixel difference of mimjax's JPEG crop from torchvision's (PIL decode, crop, bicubic "
                "resize; same boxes; uint8 levels):", "",
                "| images | crops | n | DCT-scaled share | mean abs | p99 abs | max abs | equal pixels |",
                "|---|---|---|---|---|---|---|---|"]
        for r in res["pixels"]:
            out.append(f"| {r['images']} | {r['crops']} | {r['n']} | {r['share_dct_scaled']:.0%} | "
                       f"{r['mean_abs_diff']:.3f} | {r['p99_abs_diff']:.0f} | {r['max_abs_diff']} | "
                       f"{r['equal_pixels']:.2%} |")
    if res.get("projection"):
        out += ["", input_projection.markdown(res["projection"], res["projection_rates"])]
    return "\n".join(out) + "\n"


def projection_rates(summary: dict) -> dict:
    """img/s per core (median) on 500x375 of torchvision and of mimjax's folder pipeline."""
    impls = summary.get("500x375", {})
    names = {"torchvision": "torchvision", "mimjax_folder_uint8": "mimjax"}
    return {names[k]: impls[k]["per_core"] for k in names if k in impls}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000, help="JPEGs per size (epochs repeat)")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=32, help="timed batches after the first")
    ap.add_argument("--workers", type=int, default=0, help="0: the usable cores")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--impls", nargs="+", default=list(DEFAULT_IMPLS), choices=IMPLS + (RANDAUGMENT_IMPL,))
    ap.add_argument("--randaugment", action="store_true", help=f"only RandAugment's cost ({RANDAUGMENT})")
    ap.add_argument("--no-pixels", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.workers = args.workers or cores()
    if args.child:
        print(json.dumps(child(args)))
        return
    base = os.path.join(args.out, f"input_cpu_{cores()}cores{'_' + args.tag if args.tag else ''}")
    if args.randaugment:
        return run_randaugment(args, base.replace("input_cpu", "input_randaugment_cpu"))
    start, n = time.time(), cores()
    with tempfile.TemporaryDirectory(prefix="bench_input_") as d:
        from mimjax.data import imagenet

        for size in args.sizes:
            w, h = map(int, size.split("x"))
            write_dataset(os.path.join(d, size, "folder"), args.images, size=(w, h))
            if any("arrayrecord" in i for i in args.impls):
                imagenet.prepare(os.path.join(d, size, "arrayrecord"), folder=os.path.join(d, size, "folder"))
        rates = {size: {impl: [] for impl in args.impls} for size in args.sizes}
        cpu = {size: {impl: [] for impl in args.impls} for size in args.sizes}
        env = {**os.environ, "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")}
        for r in range(args.rounds):
            order = args.impls if r % 2 == 0 else list(reversed(args.impls))
            for size in args.sizes:
                for impl in order:
                    cmd = [sys.executable, "-m", "bench.input", "--child", impl, "--dir", os.path.join(d, size),
                           "--workers", str(args.workers), "--batch", str(args.batch), "--batches", str(args.batches)]
                    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
                    if p.returncode:
                        raise SystemExit(f"{impl} failed:\n{p.stderr[-3000:]}")
                    row = json.loads(p.stdout.strip().splitlines()[-1])
                    rates[size][impl].append(row["img_per_s"])
                    cpu[size][impl].append(row["cpu_ms_per_img"])
                    print(f"round {r}: {size}: {impl}: {row['img_per_s']:.1f} img/s, {row['cpu_ms_per_img']:.2f} "
                          f"CPU ms/img, {row['cores_busy']:.2f} cores busy", flush=True)
        pixels = [] if args.no_pixels else pixel_difference(d, args.sizes)
    import cv2
    import grain
    import PIL
    import simplejpeg
    import torch
    import torchvision

    summary = {size: {impl: summarize(rates[size][impl], cpu[size][impl], n) for impl in args.impls}
               for size in args.sizes}
    prates = projection_rates(summary)
    res = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu": cpu_model(), "cores": n,
                    "workers": args.workers, "images": args.images, "sizes": args.sizes, "batch": args.batch,
                    "batches": args.batches, "rounds": args.rounds, "torch": torch.__version__,
                    "torchvision": torchvision.__version__, "grain": grain.__version__, "pillow": PIL.__version__,
                    "simplejpeg": simplejpeg.__version__, "opencv": cv2.__version__, "seconds": time.time() - start},
           "load_average": os.getloadavg(), "summary": summary, "pixels": pixels,
           "projection_rates": prates, "projection": input_projection.projection(prates) if prates else []}
    save(base, res, markdown(res))


if __name__ == "__main__":
    main()
