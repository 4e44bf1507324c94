"""The demo: GPA-MAE ("teacher + feature") on the embedded photos, a few minutes on 2 CPU cores.

    mimjax train --config configs/demo.py --workdir workdirs/demo

A small ViT (width 192, 6 blocks, 64x64 images, 8x8 patches -> 64 patches) with a
4-block decoder, trained on random crops of the real photographs bundled with
scikit-image (no download). No pre-trained teacher is available offline, so the teacher is
an EMA copy of the student (`teacher.source = "ema"`); the GPA masks and heatmaps are
computed exactly as with a frozen MAE teacher. Variants: `demo.py:mae` (random masking),
`demo.py:teacher` (GPA masking without the GPA head), default = "teacher + feature".
Not the authors' settings (docs/recipes.md "Our own GPA variants"): the EMA teacher, GPA from the
mean of the heads (teacher.head = -1), the GPA head from step 0 with the soft share 0.3 -> 0
and per-step progress.
"""
from mimjax.train.config import base_config


def get_config(arg=None):
    c = base_config()
    c.seed = 0
    c.batch_size = 32
    c.total_steps = 300
    c.log_every = 10
    c.checkpoint_every = 100
    c.snapshot_every = 150
    c.model.name = "mae_vit_tiny_patch16"
    c.model.img_size, c.model.patch_size, c.model.depth = 64, 8, 6
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 128, 4, 4
    c.data.source = "embedded"
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 30
    c.optimizer.weight_decay = 0.05
    if arg == "mae":
        c.masking.strategy = "random"
        c.teacher.source = "none"
    else:
        c.masking.strategy = "gpa"
        c.masking.progress = "step"
        c.model.gpa_head = arg != "teacher"
        c.teacher.source = "ema"
        c.teacher.block, c.teacher.head = 4, -1
        c.teacher.ema_momentum = 0.99
    return c
