"""`mimjax visualize`: look at what a pre-training run learned, as PNGs.

    mimjax visualize --workdir W --out DIR                        # a few images of the run's dataset
    mimjax visualize --workdir W --out DIR --images a.jpg b.png   # your own images
    mimjax visualize --workdir W --out DIR --progress 0.3 --mask_progress 1.0

Writes DIR/reconstruction.png, one row per image: original | masked input (masked patches
grey) | reconstruction (un-normalised with each patch's own statistics when the run used
norm_pix_loss) | reconstruction pasted on the visible patches | the teacher's GPA heatmap
(GPA runs) | the mask chosen at --mask_progress (grey); and DIR/curves.png, the training
curves of W/metrics.jsonl. The model is the latest checkpoint of W; the teacher is the
run's own (its frozen checkpoint, the EMA copy saved with the state, or the student).
--progress is where in training the reconstruction's mask is drawn (default: where the
checkpoint is).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _own_images(paths, img_size: int):
    """Files -> float32 [B, S, S, 3]: the evaluation transform (resize, center crop, mean/std)."""
    import numpy as np
    from PIL import Image

    from mimjax.data.augment import eval_transform
    from mimjax.data.sources import to_rgb_uint8

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(eval_transform(to_rgb_uint8(im), img_size))
        except (OSError, ValueError) as e:
            raise ValueError(f"--images {p!r} is not a readable image: {e}") from e
    return np.stack(out)


def main(argv) -> int:
    ap = argparse.ArgumentParser(prog="mimjax visualize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True, help="directory for the PNGs")
    ap.add_argument("--images", nargs="*", default=[], help="image files (default: the run's dataset)")
    ap.add_argument("--num_images", type=int, default=4, help="images taken from the dataset")
    ap.add_argument("--progress", type=float, default=None, help="training progress in [0, 1] of the "
                    "reconstruction's mask (default: the checkpoint's)")
    ap.add_argument("--mask_progress", type=float, default=1.0, help="progress of the last column's mask")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg_path = os.path.join(args.workdir, "config.json")
    if not os.path.isfile(cfg_path):
        print(f"mimjax visualize: {args.workdir!r} has no config.json; is it a mimjax workdir?", file=sys.stderr)
        return 2
    for name in ("progress", "mask_progress"):
        v = getattr(args, name)
        if v is not None and not 0.0 <= v <= 1.0:
            print(f"mimjax visualize: --{name}={v}: expected a value in [0, 1]", file=sys.stderr)
            return 2
    if args.num_images < 1:
        print(f"mimjax visualize: --num_images={args.num_images}: expected >= 1", file=sys.stderr)
        return 2

    import jax
    import ml_collections

    from mimjax import data
    from mimjax.train import config as config_lib
    from mimjax.train import teacher as teacher_lib
    from mimjax.train import pretrain as train
    from mimjax.train import schedule as schedule_lib
    from mimjax.train import pictures as visualize
    from mimjax.train.checkpoint import load_state

    with open(cfg_path) as f:
        cfg = config_lib.fill_missing(ml_collections.ConfigDict(json.load(f)))
    model = train.model_from_config(cfg.model)
    enc = model.encoder
    try:
        images = (_own_images(args.images, enc.img_size) if args.images else
                  next(data.make_iterator(cfg.data, img_size=enc.img_size, global_batch_size=args.num_images,
                                          seed=cfg.seed + 1 + args.seed))["image"])  # [B, S, S, 3]
        saved = load_state(os.path.join(args.workdir, "checkpoints"))
        teacher = teacher_lib.teacher_model(cfg, enc)
        frozen = train.load_frozen_teacher(cfg, teacher)
    except ValueError as e:
        print(f"mimjax visualize: {e}", file=sys.stderr)
        return 2
    state = train.TrainState(step=saved["step"], params=saved["params"], opt_state={},  # what a snapshot reads
                             ema_params=saved.get("ema_params", {}), nonfinite_steps=0, first_nonfinite_step=-1)
    if args.progress is None:
        steps = schedule_lib.Schedule.from_config(cfg, cfg.data.num_examples if cfg.data.num_examples > 0
                                           else data.source_length(cfg.data))
        args.progress = float(steps.progress(int(saved["step"]), cfg.masking.progress))

    snapshot = jax.jit(train.make_snapshot_fn(cfg, model, teacher))
    out = snapshot(state, frozen, images, jax.random.key(args.seed), args.progress, args.mask_progress)
    grid = train.snapshot_grid(cfg, enc, images, out, max_images=len(images))
    os.makedirs(args.out, exist_ok=True)
    written = [os.path.join(args.out, "reconstruction.png")]
    visualize.save_png(written[0], grid)
    metrics_path = os.path.join(args.workdir, "metrics.jsonl")
    if os.path.exists(metrics_path):
        written.append(os.path.join(args.out, "curves.png"))
        visualize.plot_curves(metrics_path, written[-1])
    print(f"step {int(saved['step'])}, mask at progress {args.progress:.3f} "
          f"(last column {args.mask_progress:.3f}): wrote {', '.join(written)}")
    return 0
