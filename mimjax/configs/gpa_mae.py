"""GPA-MAE (docs/method.md §5): ViT-B/16, 200 epochs, 20 warm-up, blr 1.5e-4, batch 4096,
norm_pix_loss, ratio 0.75, hard share 0.0 -> 0.5, frozen MAE-pretrained ViT-B/16 teacher,
GPA from block 9, head 11.

The authors' two runs:
    # "GPA as a teacher" (masking only; soft share 0.3 -> 0.0):
    mimjax train --config configs/gpa_mae.py:vit_base_patch16 --workdir workdirs/gpa_b16 \
        --config.teacher.path=workdirs/mae_b16
    # "GPA as a teacher and a feature", as released: + the GPA head, whose blocks run only
    # after 75% of training (model.gpa_head_late_start), and a constant soft share of 0.3:
    mimjax train --config configs/gpa_mae.py:vit_base_patch16,feature --workdir workdirs/gpa_f_b16 \
        --config.teacher.path=workdirs/mae_b16

Our own variant, not the authors': ",feature_early" runs the GPA head from step 0 with the
usual soft share 0.3 -> 0.0. Teachers without a checkpoint (ours): ",ema" (a momentum copy of
the student) or ",self" (the student itself, gradients stopped). ",runlocal": a tiny smoke
run on the embedded photos with an EMA teacher. The teacher path is a mimjax MAE workdir, or
a directory written by `mimjax import` from the official `mae_pretrain_vit_base.pth`.
"""
from mimjax.train import recipes


def get_config(arg=None):
    variant, flags = recipes.parse(arg, known=("feature", "feature_early", *recipes.TEACHER_SOURCES))
    if {"feature", "feature_early"} <= flags:
        raise ValueError(f"recipe {arg!r}: 'feature' (the authors' late head) and 'feature_early' (ours) exclude "
                         f"each other")
    c = recipes.gpa_teacher(recipes.pretraining(variant), flags)
    c.batch_size = 4096
    c.total_epochs = 200
    c.optimizer.warmup_epochs = 20
    c.model.gpa_head = bool({"feature", "feature_early"} & flags)
    if "feature" in flags:  # the authors' released "teacher + feature" run
        c.model.gpa_head_late_start = True
        c.masking.soft = (0.3, 0.3)
    return recipes.finish(c, flags)
