"""GPA-MAE, the authors' recipe (GPA_SPEC.md 5): ViT-B/16, 200 epochs, 20 warm-up, blr 1.5e-4,
batch 4096, norm_pix_loss, ratio 0.75, hard share 0.0 -> 0.5, soft share 0.3 -> 0.0, frozen
MAE-pretrained ViT-B/16 teacher, GPA from block 9, head 11.

    # "GPA as a teacher" (masking only):
    mimjax train --config configs/gpa_mae.py:vit_base_patch16 --workdir workdirs/gpa_b16 \
        --config.teacher.path=workdirs/mae_b16
    # "GPA as a teacher and a feature" (+ the GPA head):
    mimjax train --config configs/gpa_mae.py:vit_base_patch16,feature --workdir workdirs/gpa_f_b16 \
        --config.teacher.path=workdirs/mae_b16

The teacher path is a mimjax MAE workdir, or a directory written by `mimjax import` from the
official `mae_pretrain_vit_base.pth`. Other flags: "runlocal" (tiny smoke run on the embedded
photos, EMA teacher so no checkpoint is needed), "ema" / "self" (teacher without a checkpoint),
"late_head" (the released code's quirk: GPA head blocks only after 75% of training, with a
constant soft share of 0.3).
"""
from mimjax.train import recipes


def get_config(arg=None):
    variant, flags = recipes.parse(arg, known=("feature", "late_head", *recipes.TEACHER_SOURCES))
    c = recipes.gpa_teacher(recipes.pretraining(variant), flags)
    c.batch_size = 4096
    c.total_epochs = 200
    c.optimizer.warmup_epochs = 20
    c.model.gpa_head = "feature" in flags or "late_head" in flags
    if "late_head" in flags:
        c.model.gpa_head_late_start = True
        c.masking.soft = (0.3, 0.3)
    return recipes.finish(c, flags)
