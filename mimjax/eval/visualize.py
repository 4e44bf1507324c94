"""`mimjax visualize`: look at what a pre-training run learned, as PNGs.

    mimjax visualize --workdir W --out DIR                        # a few images of the run's dataset
    mimjax visualize --workdir W --out DIR --images a.jpg b.png   # your own images
    mimjax visualize --workdir W --out DIR --progress 0.3 --mask_progress 1.0

Writes DIR/reconstruction.png, one row per image: original | masked input (masked patches
grey) | reconstruction (un-normalised with each patch's own statistics when the run used
norm_pix_loss) | reconstruction pasted on the visible patches | the teacher's GPA heatmap
(GPA runs) | the mask chosen at mask_progress (grey; by default 1.0, or 0.0 once progress
is past the middle, so that it differs from the input's mask); and DIR/curves.png, the training
curves of W/metrics.jsonl. The model is the latest checkpoint of W; the teacher is the
run's own (its frozen checkpoint, the EMA copy saved with the state, or the student).
progress is where in training the reconstruction's mask is drawn (None: where the
checkpoint is).
"""
from __future__ import annotations

from mimjax import paths as paths_lib
from mimjax import workdir as workdir_lib
from mimjax.errors import UsageError


def _own_images(paths, img_size: int):
    """Files -> float32 [B, S, S, 3]: the evaluation transform (resize, center crop, mean/std)."""
    import numpy as np
    from PIL import Image

    from mimjax.data.augment import eval_transform
    from mimjax.data.images import to_rgb_uint8

    out = []
    for p in paths:
        try:
            with paths_lib.open_file(p, "rb") as f, Image.open(f) as im:  # local or gs://
                out.append(eval_transform(to_rgb_uint8(im), img_size))
        except (OSError, ValueError) as e:
            raise ValueError(f"--images {p!r} is not a readable image: {e}") from e
    return np.stack(out)


def visualize(workdir: str, out: str, images=(), num_images: int = 4, progress: float | None = None,
              mask_progress: float | None = None, seed: int = 0) -> list[str]:
    """Writes OUT/reconstruction.png (and OUT/curves.png when WORKDIR has metrics.jsonl);
    returns the paths written. Raises UsageError (one line) for input that cannot be used."""
    paths_lib.check_reachable(workdir, "--workdir")  # gs://...: one line before any work
    paths_lib.check_reachable(out, "--out")
    workdir_lib.check_output(out, "--out", not_in=workdir)  # never into a run directory or its checkpoints/
    for name in ("reconstruction.png", "curves.png"):  # nor through a link
        paths_lib.refuse_link(paths_lib.join(out, name))
    saved_cfg = workdir_lib.read_config(workdir)
    if saved_cfg is None:
        raise UsageError(f"{workdir!r} has no config.json; is it a mimjax workdir?")
    for name, v in (("progress", progress), ("mask_progress", mask_progress)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise UsageError(f"--{name}={v}: expected a value in [0, 1]")
    if num_images < 1:
        raise UsageError(f"--num_images={num_images}: expected >= 1")

    import jax

    from mimjax import data
    from mimjax.train import config as config_lib
    from mimjax.train import pictures
    from mimjax.train import step as step_lib

    cfg = config_lib.fill_missing(saved_cfg)
    img_size = cfg.model.img_size
    try:
        num_examples = cfg.data.num_examples if cfg.data.num_examples > 0 else data.source_length(cfg.data)
        built = step_lib.build(cfg, num_examples)  # the run's own model, teacher and schedule
        batch = (_own_images(images, img_size) if images else
                 next(data.make_iterator(cfg.data, img_size=img_size, global_batch_size=num_images,
                                         seed=cfg.seed + 1 + seed))["image"])  # [B, S, S, 3]
        saved = workdir_lib.load_state(workdir)
        frozen = built.teacher.load_frozen()
    except ValueError as e:
        raise UsageError(str(e)) from e
    if progress is None:
        progress = float(built.schedule.progress(int(saved["step"]), cfg.masking.progress))
    if mask_progress is None:
        mask_progress = pictures.other_progress(progress)
    snapshot = jax.jit(built.snapshot)
    result = snapshot(saved["params"], saved.get("ema_params", {}), frozen, batch, jax.random.key(seed), progress,
                      mask_progress)
    grid = step_lib.snapshot_grid(cfg, built.encoder, batch, result, max_images=len(batch), mask_at=mask_progress)
    paths_lib.makedirs(out)
    written = [paths_lib.join(out, "reconstruction.png")]
    pictures.save_png(written[0], grid)
    metrics_path = paths_lib.join(workdir, "metrics.jsonl")
    if paths_lib.exists(metrics_path):
        written.append(paths_lib.join(out, "curves.png"))
        pictures.plot_curves(metrics_path, written[-1])
    print(f"step {int(saved['step'])}, mask at progress {progress:.3f} "
          f"(last column {mask_progress:.3f}): wrote {', '.join(written)}")
    return written
