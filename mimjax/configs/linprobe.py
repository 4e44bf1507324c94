"""MAE linear-probing recipe (He et al. 2022, LINPROBE.md / main_linprobe.py), ImageNet-1k.

    mimjax eval linprobe --config configs/linprobe.py --workdir PRETRAIN_W \
        --config.data.data_dir=/path/to/tensorflow_datasets

Frozen encoder, cls token (`--config.pool=avg` for the mean patch token), BatchNorm without
affine + linear head; LARS, blr 0.1 (lr = blr * batch / 256), weight decay 0, batch 16384,
90 epochs (10 warm-up), cosine to 0; RandomResizedCrop + flip. Reference top-1 (MAE
paper, its 1600-epoch weights): 68.0 (B), 75.8 (L), 76.6 (H). Writes W/linprobe.json (and W/linprobe/ as its run
directory: checkpoints, metrics.jsonl; `--out` moves it).

The training crop is MAE's util/crop.py (one draw, clamped to the image: `data.crop=mae`),
scale (0.08, 1); the test split is evaluated every epoch and linprobe.json holds the final
and the best top-1 (MAE and the GPA authors print the best, "Max accuracy").

",gpa" (`linprobe.py:gpa`): the GPA authors' main_linprobe.py as released: SGD momentum
0.9 in place of LARS (their LARS line is commented out), weight decay 0, blr 0.1, 90
epochs (10 warm-up), batch 1024 (their default 512 per GPU on the 2 GPUs of their README's
runs), the same head and crop.

",runlocal" (`linprobe.py:runlocal`): the recipe on the embedded labelled faces (25x25, 150
train / 50 test), seconds on a CPU, with SGD in place of LARS (see below).
"""
from mimjax.eval.config import base_config, runlocal


def get_config(arg=None):
    flags = (arg or "").split(",")
    c = base_config()
    c.batch_size = 16384
    c.total_epochs = 90
    c.pool = "token"
    c.model.drop_path = 0.0
    c.optimizer.name = "lars"
    c.optimizer.blr, c.optimizer.weight_decay, c.optimizer.min_lr = 0.1, 0.0, 0.0
    c.optimizer.warmup_epochs, c.optimizer.momentum, c.optimizer.layer_decay = 10, 0.9, 1.0
    c.augment.mixup, c.augment.cutmix, c.augment.label_smoothing, c.augment.reprob = 0.0, 0.0, 0.0, 0.0
    c.data.crop = "mae"  # util/crop.py
    if "gpa" in flags:  # the GPA authors' main_linprobe.py
        c.optimizer.name, c.batch_size = "sgd", 1024
    if "runlocal" in flags:
        runlocal(c)
        # SGD (momentum 0.9) instead of LARS here: LARS moves a kernel by ~lr * 0.001 of its
        # norm a step and the bias by lr * grad; at a few dozen steps no lr suits both (at
        # lr >= 10 the 2-class bias diverges, below the kernel stays at its random init).
        c.optimizer.name, c.optimizer.blr = "sgd", 3.2  # lr 0.4 at batch 32
    return c
