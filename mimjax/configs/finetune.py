"""MAE fine-tuning recipe (He et al. 2022, FINETUNE.md / main_finetune.py), ImageNet-1k via TFDS.

    mimjax finetune --config configs/finetune.py:vit_base_patch16 --workdir PRETRAIN_W --out FT_W \
        --config.data.data_dir=/path/to/tensorflow_datasets

The encoder (architecture and weights) comes from --workdir, a pre-training workdir or a
`mimjax import` directory; the variant picks the recipe of that size:
- vit_base_patch16 (default): 100 epochs, blr 5e-4, layer_decay 0.65, drop_path 0.1;
- vit_large_patch16: 50 epochs, blr 1e-3, layer_decay 0.75, drop_path 0.2;
- vit_huge_patch14: 50 epochs, blr 1e-3, layer_decay 0.75, drop_path 0.3.
All: batch 1024, 5 warm-up epochs, AdamW (0.9, 0.999), wd 0.05, min_lr 1e-6, RandAugment
rand-m9-mstd0.5-inc1 (host, `data.randaugment`), mixup 0.8, cutmix 1.0, label smoothing 0.1,
random erasing 0.25, global average pooling + fc_norm: MAE's table (FINETUNE.md, paper
Table 9). `--config.data.randaugment=` (empty) turns RandAugment off.
Reference top-1 (MAE's, for its 1600-epoch weights; not targets for a 200-epoch GPA run):
83.6 (B), 85.9 (L), 86.9 (H). The test split is evaluated every epoch (`eval_every_epochs`):
finetune.json holds the final top-1 and the best (`best_top1`, what the papers report).

",gpa" (`finetune.py:vit_base_patch16,gpa`): the GPA authors' fine-tuning of their ViT-B
(docs/method.md §5), which is MAE's ViT-B recipe with layer decay 0.8 instead of 0.65.

",runlocal" (`finetune.py:runlocal` or `finetune.py:vit_base_patch16,runlocal`): the same
recipe on the embedded labelled faces (25x25, 150 train / 50 test), seconds on a CPU.
"""
from mimjax.eval.config import base_config, runlocal

RECIPES = {  # variant -> (epochs, blr, layer_decay, drop_path)
    "vit_base_patch16": (100, 5e-4, 0.65, 0.1),
    "vit_large_patch16": (50, 1e-3, 0.75, 0.2),
    "vit_huge_patch14": (50, 1e-3, 0.75, 0.3),
}


def get_config(arg=None):
    flags = (arg or "vit_base_patch16").split(",")
    variant = flags[0] if flags[0] in RECIPES else "vit_base_patch16"
    epochs, blr, layer_decay, drop_path = RECIPES[variant]
    c = base_config()
    c.batch_size = 1024
    c.total_epochs = epochs
    c.pool = "avg"
    c.model.drop_path = drop_path
    c.model.remat = variant != "vit_base_patch16"
    c.optimizer.name = "adamw"
    c.optimizer.blr, c.optimizer.layer_decay = blr, layer_decay
    if "gpa" in flags:
        c.optimizer.layer_decay = 0.8
    c.optimizer.warmup_epochs, c.optimizer.weight_decay, c.optimizer.min_lr = 5, 0.05, 1e-6
    c.data.randaugment = "rand-m9-mstd0.5-inc1"  # timm's, after crop and flip (mimjax/data/randaugment.py)
    c.augment.mixup, c.augment.cutmix, c.augment.label_smoothing, c.augment.reprob = 0.8, 1.0, 0.1, 0.25
    if "runlocal" in flags:
        runlocal(c)
        c.optimizer.blr = 8e-3  # lr 1e-3 at batch 32
    return c
