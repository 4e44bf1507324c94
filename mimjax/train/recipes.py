"""What the pre-training recipes in configs/ share: the recipe argument, the encoder size and
the GPA teacher (docs/method.md §5). A recipe is `get_config("vit_base_patch16,flag,...")`.

It lives in the package, not in configs/: ml_collections loads a config file by its path,
so a sibling configs/common.py could only be imported by editing sys.path."""
from __future__ import annotations

from mimjax.train.config import base_config, runlocal

TEACHER_SOURCES = ("ema", "self")  # flags that replace the frozen checkpoint teacher


def parse(arg: str | None, known: tuple[str, ...], default: str = "vit_base_patch16") -> tuple[str, set[str]]:
    """"vit_base_patch16,feature,runlocal" -> ("vit_base_patch16", {"feature", "runlocal"});
    an unknown flag raises ValueError naming it and the known ones."""
    variant, *flags = (arg or default).split(",")
    unknown = sorted(set(flags) - set(known) - {"runlocal"})
    if unknown:
        raise ValueError(f"recipe flag(s) {unknown} in {arg!r}: expected any of {sorted({*known, 'runlocal'})}")
    return variant, set(flags)


def pretraining(variant: str):
    """The schema's defaults with the encoder `variant`; remat and accumulation "auto": the
    cheapest setting whose step fits the device (mimjax/train/plan.py), chosen at start-up;
    scan "auto": the blocks run as one `lax.scan` on TPU with remat (models/precision.resolve_scan)."""
    c = base_config()
    c.model.name = "mae_" + variant
    c.model.remat, c.optimizer.accum_steps = "auto", "auto"
    c.model.scan = "auto"  # one scanned block on TPU with remat (libtpu's compile time and memory), else unrolled
    # bf16 products (float32 accumulation, parameters, norms, losses) on GPU/TPU and on CPUs
    # with native bf16; float32 elsewhere. Resolved when the model is built (models/precision.py).
    c.model.dtype = "auto"
    return c


def gpa_teacher(c, flags: set[str]):
    """GPA masking with the authors' teacher: hard share 0.0 -> 0.5 and soft 0.3 -> 0.0 of the
    masked patches, a frozen MAE-pretrained ViT-B/16 teacher, GPA from block 9, head 11;
    the "ema" / "self" flags pick a teacher that needs no checkpoint. teacher.block / head stay
    unset: they follow the teacher (`config.follow_teacher`: block 9 and head 11 of a ViT-B,
    three quarters deep and the last head of any other) unless set."""
    c.masking.strategy = "gpa"
    c.masking.hard = (0.0, 0.5)
    c.masking.soft = (0.3, 0.0)
    c.teacher.source = "checkpoint"
    c.teacher.name = "vit_base_patch16"
    for source in TEACHER_SOURCES:
        if source in flags:
            c.teacher.source = source
    return c


def finish(c, flags: set[str]):
    """"runlocal": the recipe shrunk to a smoke run on the embedded photos, with an EMA
    teacher in place of a checkpoint (none ships offline)."""
    if "runlocal" in flags:
        if c.teacher.source == "checkpoint":
            c.teacher.source = "ema"
        c.optimizer.accum_steps = 1  # runlocal sets remat False
        runlocal(c)
        c.model.dtype = "float32"  # smoke runs keep the float32 reference numerics on any host
    return c
