"""SimMIM (Xie et al. 2022), its released ViT-B recipe, with GPA masking and the GPA head as
options: GPA's transferability to a second masked-image-modeling architecture.

    # plain SimMIM, random masking:
    mimjax train --config configs/simmim.py:vit_base_patch16 --workdir workdirs/simmim_b16
    # GPA masking ("GPA as a teacher"), frozen MAE-pretrained teacher:
    mimjax train --config configs/simmim.py:vit_base_patch16,gpa --workdir workdirs/simmim_gpa_b16 \
        --config.teacher.path=workdirs/mae_b16
    # GPA masking + GPA head ("teacher and feature"):
    mimjax train --config configs/simmim.py:vit_base_patch16,feature --workdir workdirs/simmim_gpaf_b16 \
        --config.teacher.path=workdirs/mae_b16

Recipe (microsoft/SimMIM, configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml
and config.py defaults): 224px, patch 16, mask ratio 0.6, 800 epochs, 10 warm-up, AdamW
(0.9, 0.999), weight decay 0.05, grad clip 5.0, base lr 1e-4 per 512 images (lr 4e-4 at
batch 2048; the paper's 8e-4 at 2048 is its Swin-B recipe), L1 on the (ImageNet-normalised)
pixels of masked patches, no norm_pix. Where mimjax differs: SimMIM masks 32x32 blocks
(mask_patch_size 32 = 2x2 patches of 16); mimjax masks single patches (ratio 0.6 of N = 196
-> 118 masked, SimMIM 30 of 49 blocks = 120 patches). Its lr schedule is step decay x0.1
at epoch 700; mimjax has cosine only. Drop path 0.1, layer scale and relative position
bias are not in the config schema (the encoder is the MAE-style ViT here).

GPA flags follow configs/gpa_mae.py: hard share 0.0 -> 0.5, soft 0.3 -> 0.0 of the masked
patches, teacher block 9, head 11. "ema" / "self" pick a teacher without a checkpoint;
"runlocal" makes a tiny smoke run on the embedded photos (EMA teacher).
"""
from mimjax.train import recipes


def get_config(arg=None):
    variant, flags = recipes.parse(arg, known=("gpa", "feature", *recipes.TEACHER_SOURCES))
    c = recipes.pretraining(variant)
    c.model.arch = "simmim"  # model.name keeps the schema's "mae_" prefix for every arch
    c.model.norm_pix_loss = False
    c.batch_size = 2048
    c.total_epochs = 800
    c.optimizer.warmup_epochs = 10
    c.optimizer.blr = 1e-4 * 256 / 512  # mimjax: lr = blr * batch / 256; SimMIM: base_lr * batch / 512
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip = 5.0
    c.masking.mask_ratio = 0.6
    c.masking.strategy = "random"
    c.teacher.source = "none"
    if "gpa" in flags or "feature" in flags:
        recipes.gpa_teacher(c, flags)
        c.model.gpa_head = "feature" in flags
    return recipes.finish(c, flags)
