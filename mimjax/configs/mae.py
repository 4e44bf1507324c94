"""Official MAE pre-training recipe (He et al. 2022), ImageNet-1k via TFDS.

    mimjax train --config configs/mae.py:vit_base_patch16 --workdir workdirs/mae_b16 \
        --config.data.data_dir=/path/to/tensorflow_datasets

Variants: vit_{tiny,small,base,large}_patch16, vit_huge_patch14 (e.g. `mae.py:vit_large_patch16`);
append ",runlocal" (`mae.py:vit_base_patch16,runlocal`) for a tiny smoke run on the embedded photos.
Headline recipe: 800 epochs, 40 warm-up, blr 1.5e-4, batch 4096, norm_pix_loss, ratio 0.75.
"""
from mimjax.train import recipes


def get_config(arg=None):
    variant, flags = recipes.parse(arg, known=())
    c = recipes.pretraining(variant)
    c.batch_size = 4096
    c.total_epochs = 800
    c.optimizer.warmup_epochs = 40
    c.masking.strategy = "random"
    c.teacher.source = "none"
    return recipes.finish(c, flags)
