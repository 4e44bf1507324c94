"""Where the host pipeline's CPU time goes, stage by stage, per image, one thread.

    python -m bench.input_profile                 # ~1 min; bench/results/input_profile_cpu.{json,md}
    python -m bench.input_profile --images 64 --reps 2 --workers 0     # no threads-vs-processes section
    python -m bench.input_profile --no-opencv --tag before_opencv   # PIL's resize, NumPy's flip copy

On 500x375 and 2000x1500 JPEGs (`bench.input.write_dataset`: cut from the bundled photos,
quality 90), each stage of mimjax's training crop (`augment.train_crop_uint8` on the bytes)
is timed alone in CPU time of this thread (`time.thread_time`, so other processes on a
shared machine do not count), best of `--reps` passes over `--images` images: read the
file, parse the header, draw the box, decode (at `dct_factor`'s DCT scale), crop (a view),
resize (PIL's bicubic, as torchvision, and OpenCV's `fast_resize`, what the pipeline uses),
flip (a view), batch (`np.stack` of 64 flipped crops, per image), normalise (host float32,
per image; the trainer normalises on the device instead). The last rows time the whole
crop through `train_crop_uint8`, torchvision's transform (PIL open + convert +
RandomResizedCrop + flip + ToTensor + Normalize) and the pipeline itself with 1 grain
thread (`make_iterator`, uint8 batches; what it adds beyond the stages is grain's
bookkeeping and the thread hand-off). With `--workers W` (default 2), last: grain's W reader
threads against W worker processes (`threads_vs_processes`) on the 500x375 set.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from bench.input import SCALE, SIZE, best_ms, cpu_model, run_mimjax, save, timed, torchvision_transform, write_dataset
from mimjax.data import augment, images, sources

SIZES = ((500, 375), (2000, 1500))
BATCH = 64


def stage_costs(paths: list[str], reps: int) -> dict:
    """CPU ms per image of each stage (module docstring) over the JPEG files `paths`."""
    datas = [open(p, "rb").read() for p in paths]
    hws = [augment.jpeg_size(d) for d in datas]
    rng = np.random.default_rng(0)
    boxes = [augment.crop_box(rng, h, w, SCALE) for h, w in hws]
    factors = [augment.dct_factor(b[2], b[3], SIZE) for b in boxes]
    decoded = [augment.decode_scaled(d, h, w, f) for d, (h, w), f in zip(datas, hws, factors)]
    crops = [augment.scaled_crop(a, h, w, b) for a, (h, w), b in zip(decoded, hws, boxes)]
    outs = [augment.fast_resize(c, SIZE) for c in crops]
    flipped = [augment.hflip(o) for o in outs]
    batches = [flipped[i:i + BATCH] for i in range(0, len(flipped) - BATCH + 1, BATCH)] or [flipped]
    per_batch = len(batches[0])
    idx = range(len(datas))
    tv = torchvision_transform()
    return {
        "dct_scaled_share": float(np.mean([f > 1 for f in factors])),
        "read file": best_ms(lambda p: open(p, "rb").read(), paths, reps),
        "header (simplejpeg + EXIF check)": best_ms(augment.jpeg_size, datas, reps),
        "crop box (torchvision's draw)": best_ms(lambda hw: augment.crop_box(rng, hw[0], hw[1], SCALE), hws, reps),
        "decode (libjpeg-turbo, DCT scale)": best_ms(lambda i: augment.decode_scaled(datas[i], *hws[i], factors[i]),
                                                   idx, reps),
        "decode (PIL open + load + RGB, torchvision's)": best_ms(images.decode, datas, reps),
        "crop (view)": best_ms(lambda i: augment.scaled_crop(decoded[i], *hws[i], boxes[i]), idx, reps),
        "resize: PIL bicubic (torchvision's)": best_ms(
            lambda c: np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((SIZE, SIZE), Image.BICUBIC)),
            crops, reps),
        "resize: OpenCV fast_resize": best_ms(lambda c: augment.fast_resize(c, SIZE), crops, reps),
        "flip (draw, then OpenCV's copy half the time)": best_ms(
            lambda o: augment.hflip(o) if rng.uniform() < 0.5 else o, outs, reps),
        "flip: NumPy's copy of the reversed view, half the time": best_ms(
            lambda o: np.ascontiguousarray(o[:, ::-1]) if rng.uniform() < 0.5 else o, outs, reps),
        "batch (np.stack of 64 contiguous crops)": best_ms(np.stack, batches, reps) / per_batch,
        "normalise on the host (float32; the trainer does it on the device)": best_ms(
            augment.normalize, [np.stack(b) for b in batches], reps) / per_batch,
        "total: train_crop_uint8 (header to flip)": best_ms(
            lambda d: augment.train_crop_uint8(d, SIZE, rng, SCALE, decode=images.decode), datas, reps),
        "total: torchvision transform (float32 tensor)": best_ms(
            lambda d: tv(Image.open(io.BytesIO(d)).convert("RGB")), datas, reps),
    }


def pipeline_cost(folder: str, images: int) -> float:
    """CPU ms per image of `make_iterator` with one grain thread (uint8 batches, the whole
    process), over the batches that fit after a first one."""
    batch = 32
    return run_mimjax(("folder", folder), 1, batch, max(1, images // batch - 1), uint8=True)["cpu_ms_per_img"]


class _Record:
    """position -> (position, record): picklable, for grain's worker processes."""

    def __init__(self, src):
        self.src = src

    def __call__(self, m):
        return m, self.src[m % len(self.src)]


class _Crop:
    """The pipeline's training transform, built in the process that runs it (its lock
    does not pickle)."""

    def __init__(self):
        self.transform = None

    def __getstate__(self):
        return {"transform": None}

    def __call__(self, item):
        if self.transform is None:
            from mimjax.data import pipeline

            self.transform = pipeline._Transform(SIZE, True, 0)
        return self.transform(item)


def worker_rate(folder: str, mode: str, workers: int = 2, batch: int = 64, batches: int = 24) -> dict:
    """Wall img/s and CPU ms per image (this process and its children) of the pipeline's
    transform over `folder` through grain with `workers` reader threads in this process
    (mode "threads", what `make_iterator` does) or `workers` worker processes of one reader
    thread each (mode "processes", `mp_prefetch`); uint8 batches, timed after two batches."""
    import grain
    import ml_collections
    import psutil
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read their absl flags
    cfg = ml_collections.ConfigDict(dict(source="folder", folder=folder, split="train", name="", data_dir="",
                                         manual_dir="", synthetic_size=1))
    ds = grain.MapDataset.range(10 ** 7).map(_Record(sources.make_source(cfg))).map(_Crop())
    if mode == "threads":
        it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=4 * batch))
                  .batch(batch))
    else:
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=batch)).batch(batch)
        it = iter(it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))
    next(it), next(it)  # the worker processes are up
    pids = [os.getpid()] + [p.pid for p in psutil.Process().children(recursive=True)]
    return timed(lambda: next(it), pids, batch, batches)


def threads_vs_processes(folder: str, workers: int = 2, rounds: int = 3) -> dict:
    """`worker_rate` of both modes, each run in its own process, alternating, `rounds` each."""
    out = {"threads": [], "processes": []}
    for r in range(rounds):
        for mode in ("threads", "processes") if r % 2 == 0 else ("processes", "threads"):
            p = subprocess.run([sys.executable, "-m", "bench.input_profile", "--worker-mode", mode, "--folder", folder,
                                "--workers", str(workers)], capture_output=True, text=True, check=True,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            out[mode].append(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


def markdown(res: dict) -> str:
    m, cols = res["meta"], list(res["stages"])
    out = [f"# Host input pipeline, CPU ms per image by stage (one thread)",
           f"{m['date']}; CPU: {m['cpu']}; {m['images']} JPEGs per size, best of {m['reps']} passes, "
           f"CPU time of the thread (`time.thread_time`); load average at the end: "
           f"{', '.join(f'{x:.1f}' for x in res['load_average'])}."
           + ("" if m.get("opencv", True) else " Without OpenCV (--no-opencv): the 'OpenCV' rows ran PIL's "
              "bicubic and NumPy's flip copy, as the pipeline did before it."), "",
           "| stage | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for stage in res["stages"][cols[0]]:
        if stage in ("dct_scaled_share", "pipeline_1_thread"):
            continue
        out.append(f"| {stage} | " + " | ".join(f"{res['stages'][c][stage]:.3f}" for c in cols) + " |")
    out.append("| pipeline, 1 grain thread, uint8 batches (whole process) | "
               + " | ".join(f"{res['stages'][c]['pipeline_1_thread']:.3f}" for c in cols) + " |")
    out.append("| share of crops decoded at a DCT scale | "
               + " | ".join(f"{res['stages'][c]['dct_scaled_share']:.0%}" for c in cols) + " |")
    if res.get("workers"):
        out += ["", f"grain reader threads against worker processes, {m['workers']} each, 500x375, uint8 batches of "
                "64, 24 timed (wall img/s; CPU ms per image of the process and its children):", "",
                "| mode (each round its own process, alternating) | img/s per round | CPU ms / img per round |",
                "|---|---|---|"]
        for mode, rows in res["workers"].items():
            rates = ", ".join(f"{x['img_per_s']:.0f}" for x in rows)
            cpu = ", ".join(f"{x['cpu_ms_per_img']:.2f}" for x in rows)
            out.append(f"| {mode} | {rates} | {cpu} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--workers", type=int, default=2, help="threads against processes with this many (0: skip)")
    ap.add_argument("--no-opencv", action="store_true",
                    help="without OpenCV: fast_resize is PIL's bicubic, hflip NumPy's copy (the pipeline before it)")
    ap.add_argument("--worker-mode", default="", help=argparse.SUPPRESS)
    ap.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_mode:
        print(json.dumps(worker_rate(args.folder, args.worker_mode, args.workers)))
        return
    if args.no_opencv:
        augment.cv2 = None  # read at each call by fast_resize and hflip
    stages, workers = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_profile_") as d:
        for w, h in SIZES:
            folder = os.path.join(d, f"{w}x{h}")
            write_dataset(folder, args.images, size=(w, h), classes=1)
            paths = sorted(os.path.join(folder, "class_00", f) for f in os.listdir(os.path.join(folder, "class_00")))
            row = stage_costs(paths, args.reps)
            row["pipeline_1_thread"] = pipeline_cost(folder, args.images)
            stages[f"{w}x{h}"] = row
            if args.workers and (w, h) == SIZES[0]:
                workers = threads_vs_processes(folder, args.workers)
    res = {"meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu": cpu_model(), "images": args.images,
                    "reps": args.reps, "opencv": augment.cv2 is not None, "workers": args.workers},
           "load_average": os.getloadavg(), "stages": stages, "workers": workers}
    base = os.path.join(args.out, f"input_profile_cpu{'_' + args.tag if args.tag else ''}")
    save(base, res, markdown(res))


if __name__ == "__main__":
    main()
