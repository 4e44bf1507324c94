"""The config schema every recipe starts from, and its validation.

Recipes in `configs/` call `base_config()` and change values. Before anything is started,
`validate(config, ...)` checks the config itself (pure: no file, no network) and `preflight(config)`
what the run will read (teacher, data folders); each raises `ConfigError` with one line naming
the key and value. `mimjax train` calls both, `mimjax plan` only `validate`.
Top-level keys (stable): seed, batch_size, total_steps, total_epochs, log_every,
checkpoint_every, parallelism, model, data, masking, teacher, optimizer, and the monitoring
ones (writers, wandb, eval, profile); `MEANINGS` says what each key means, and `mimjax config
show --config X` prints a resolved config with them. Integer durations use -1 for "not set".
`model.remat`, `model.scan` and `optimizer.accum_steps` hold their setting or "auto" (fields of
any type, so that `--config.model.remat=auto` parses on every recipe); `teacher.block` / `teacher.head`
left unset (None) follow the teacher's architecture (`follow_teacher`).
"""
from __future__ import annotations

import math
import os

import ml_collections

from mimjax import paths, schema, workdir
from mimjax.models import ARCHS
from mimjax.models.layers import ATTENTION_IMPLEMENTATIONS
from mimjax.models.precision import resolve_scan
from mimjax.models.vit import VIT_VARIANTS
from mimjax.train import teacher
from mimjax.train.writers import parse_writers
from mimjax.schema import ConfigError, fail as _fail  # noqa: F401 (ConfigError: re-exported)


def setting_field(value) -> ml_collections.FieldReference:
    """A field that holds a bool / int setting or "auto" (model.remat, optimizer.accum_steps):
    of any type, so ml_collections parses `--config.KEY=VALUE` as a literal (True, 4, auto)
    instead of refusing "auto" for a bool or int field."""
    return ml_collections.FieldReference(value, field_type=object)


def base_config() -> ml_collections.ConfigDict:
    """The schema with its defaults; each key's meaning is in MEANINGS (`mimjax config show`)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4096
    c.total_steps = -1
    c.total_epochs = -1
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.snapshot_every = 0
    c.parallelism = ml_collections.ConfigDict()
    c.parallelism.mode = "jit"
    c.parallelism.data = -1
    c.parallelism.fsdp = 1
    c.parallelism.model = 1

    c.model = ml_collections.ConfigDict()
    c.model.arch = "mae"
    c.model.name = "mae_vit_base_patch16"
    c.model.img_size = 224
    c.model.patch_size = 0
    c.model.width = 0
    c.model.depth = 0
    c.model.num_heads = 0
    c.model.decoder_width = 512
    c.model.decoder_depth = 8
    c.model.decoder_heads = 16
    c.model.norm_pix_loss = True
    c.model.gpa_head = False
    c.model.gpa_head_late_start = False
    c.model.dtype = "float32"
    c.model.remat = setting_field(False)
    c.model.scan = setting_field(False)
    c.model.attention = "auto"
    c.model.init_from = ""
    c.model.learned_pos_embed = False

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"
    c.data.name = "imagenet2012"
    c.data.split = "train"
    c.data.data_dir = ""
    c.data.manual_dir = ""
    c.data.folder = ""
    c.data.synthetic_size = 1281167
    c.data.num_examples = -1
    c.data.prefetch = 2

    c.masking = ml_collections.ConfigDict()
    c.masking.strategy = "random"
    c.masking.mask_ratio = 0.75
    c.masking.hard = (0.0, 0.5)
    c.masking.soft = (0.3, 0.0)
    c.masking.progress = "epoch"

    c.teacher = ml_collections.ConfigDict()
    c.teacher.source = "none"
    c.teacher.path = ""
    c.teacher.name = "vit_base_patch16"
    c.teacher.block = ml_collections.config_dict.placeholder(int)  # None: follow_teacher
    c.teacher.head = ml_collections.config_dict.placeholder(int)
    c.teacher.ema_momentum = 0.996

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.blr = 1.5e-4
    c.optimizer.lr = -1.0
    c.optimizer.min_lr = 0.0
    c.optimizer.warmup_epochs = 40
    c.optimizer.warmup_steps = -1
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip = 0.0
    c.optimizer.accum_steps = setting_field(1)
    c.optimizer.nonfinite = "halt"

    # Monitoring (mimjax.train.writers, knn_eval; none of it changes the training trajectory).
    c.writers = "jsonl,tensorboard"
    c.wandb = ml_collections.ConfigDict()
    c.wandb.project = "mimjax"
    c.wandb.name = ""
    c.wandb.entity = ""
    c.wandb.mode = ""
    c.telemetry = ml_collections.ConfigDict()
    c.telemetry.peak_tflops = 0.0
    c.telemetry.input_warn_frac = 0.1
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0
    c.eval.dataset = "embedded_faces"
    c.eval.test_dataset = ""
    c.eval.train_split = "train"
    c.eval.test_split = "test"
    c.eval.data_dir = ""
    c.eval.num_train = 10000
    c.eval.num_test = 2000
    c.eval.k = 20
    c.eval.temperature = 0.07
    c.eval.pool = "token"
    c.eval.batch_size = 256
    c.profile = ml_collections.ConfigDict()
    c.profile.start_step = 10
    c.profile.num_steps = 0
    return c


# Each key of `base_config`, dotted, with its one-line meaning: the one place keys are
# explained (`mimjax config show` prints them beside the values; docs/recipes.md groups them).
MEANINGS = {
    "seed": "all randomness: init, data order, augmentation, masks",
    "batch_size": "global batch of one optimizer step, over all processes and devices",
    "total_steps": "run length in steps; set exactly one of total_steps / total_epochs (-1 = unset)",
    "total_epochs": "run length in epochs; set exactly one of total_steps / total_epochs (-1 = unset)",
    "log_every": "steps between metrics fetches (the only host syncs) and log rows",
    "checkpoint_every": "steps between checkpoints; also at the end and on SIGTERM",
    "keep_checkpoints": "how many checkpoints are kept",
    "snapshot_every": "steps between reconstruction PNGs in W/snapshots (0: only at the end)",
    "parallelism.mode": "jit: mesh + sharding rules (mimjax/parallel/mesh.py) | pmap: replicated data-parallel",
    "parallelism.data": "data-parallel mesh axis size for jit; -1 = all remaining devices",
    "parallelism.fsdp": "mesh axis over which parameters and optimizer state are sharded (FSDP)",
    "parallelism.model": "tensor-parallel mesh axis (attention heads, MLP hidden)",
    "model.arch": "mae (encoder on visible patches + decoder) | simmim (mask token in the encoder, linear head, L1)",
    "model.name": "the encoder, mae_<vit> for either arch (mae_vit_{tiny,small,base,large}_patch16, "
                  "mae_vit_huge_patch14)",
    "model.img_size": "input image size in pixels (square)",
    "model.patch_size": "patch size in pixels; 0 = from model.name",
    "model.width": "encoder width; 0 = from model.name",
    "model.depth": "encoder blocks; 0 = from model.name",
    "model.num_heads": "encoder attention heads; 0 = from model.name",
    "model.decoder_width": "MAE decoder width",
    "model.decoder_depth": "MAE decoder blocks",
    "model.decoder_heads": "MAE decoder attention heads",
    "model.norm_pix_loss": "the target is each patch normalised by its own mean and std (MAE's norm_pix_loss)",
    "model.gpa_head": "predict the GPA map too: 'teacher + feature' (docs/method.md §4)",
    "model.gpa_head_late_start": "MAE only: the GPA head's blocks run only once t > 0.75 (the released code)",
    "model.dtype": "operand dtype of every matrix product (float32 accumulation): float32 | bfloat16 | float16 "
                   "| auto (bfloat16 on GPU/TPU and CPUs with native bf16)",
    "model.remat": "activation checkpointing per block: True | False | auto (the cheapest that fits)",
    "model.scan": "each stack's blocks as one lax.scan, the same parameters (compile time and the compiling "
                  "host's memory): True | False | auto (on TPU with remat)",
    "model.attention": "auto | explicit | xla | cudnn (cuDNN flash attention, GPU); see models/layers.py",
    "model.learned_pos_embed": "the position embedding is a parameter (from the sin-cos table), as in a fine-tuned "
                               "ViT `mimjax import` keeps; False: MAE's fixed sin-cos table",
    "model.init_from": "start from these weights: a run dir or an MAE / timm .pth / .safetensors (fresh start only)",
    "data.source": "tfds | folder | embedded | embedded_faces | synthetic | idx:DIR (MNIST format, e.g. "
                   "Fashion-MNIST) | arrayrecord:PATH (mimjax prepare "
                   "imagenet)",
    "data.name": "TFDS dataset name",
    "data.split": "the split trained on",
    "data.data_dir": "TFDS data_dir ('' = TFDS default)",
    "data.manual_dir": "where imagenet2012's tar files are, for its first TFDS preparation",
    "data.folder": "image folder for data.source=folder (class-per-folder or flat)",
    "data.synthetic_size": "epoch length of data.source=synthetic",
    "data.num_examples": "examples per epoch; -1 = the source's length",
    "data.prefetch": "batches put on the devices ahead of the step",
    "masking.strategy": "random (MAE) | gpa | high (AttMask on the teacher's cls attention)",
    "masking.mask_ratio": "fraction of the patches masked",
    "masking.hard": "GPA hard share (start, end): masked by highest GPA score, at progress 0 -> 1",
    "masking.soft": "GPA soft share (start, end): masked by sampling with GPA weights, at progress 0 -> 1",
    "masking.progress": "epoch (authors: t = epoch / epochs) | step (t = step / steps)",
    "teacher.source": "none | checkpoint (frozen) | ema (momentum copy of the student) | self (the student, "
                      "no gradient)",
    "teacher.path": "teacher.source=checkpoint: a mimjax run directory or a `mimjax import` directory",
    "teacher.name": "architecture of a checkpoint teacher",
    "teacher.block": "teacher block whose attention gives the GPA scores (0-indexed); unset: three quarters "
                     "deep (the authors' 9 of ViT-B's 12)",
    "teacher.head": "attention head of the GPA scores; -1 = mean over heads; unset: the last (the authors' 11 of 12)",
    "teacher.ema_momentum": "momentum of an ema teacher",
    "optimizer.blr": "base learning rate: lr = blr * batch_size / 256",
    "optimizer.lr": "absolute learning rate, used instead of blr when > 0; -1 = unset",
    "optimizer.min_lr": "learning rate at the end of the cosine decay",
    "optimizer.warmup_epochs": "linear warm-up length in epochs",
    "optimizer.warmup_steps": "linear warm-up length in steps; used instead of warmup_epochs when >= 0",
    "optimizer.b1": "AdamW beta1",
    "optimizer.b2": "AdamW beta2",
    "optimizer.weight_decay": "AdamW decoupled weight decay",
    "optimizer.grad_clip": "global-norm gradient clipping; 0 = off",
    "optimizer.accum_steps": "gradient accumulation: micro-batches per step; auto = the fewest that fit",
    "optimizer.nonfinite": "a non-finite loss or gradient: halt (stop, keep the last good checkpoint) | skip",
    "writers": "where metrics go, comma-separated: jsonl (W/metrics.jsonl) | tensorboard (W/tb) | wandb",
    "wandb.project": "Weights & Biases project",
    "wandb.name": "the run's W&B display name ('' = W&B's)",
    "wandb.entity": "W&B entity (user or team; '' = the default)",
    "wandb.mode": "'' (WANDB_MODE or online) | online | offline (nothing sent; wandb sync later) | disabled",
    "telemetry.peak_tflops": "dense peak TFLOP/s per device for the rows' mfu; 0 = the device's own (none on a CPU)",
    "telemetry.input_warn_frac": "warn when a log window spent more than this share waiting for input (1 = never)",
    "eval.every": "steps between k-NN evaluations of the encoder (knn_top1 rows); 0 = off",
    "eval.dataset": ("k-NN labelled set, as mimjax eval knn --dataset: embedded_faces | tfds:NAME | folder:PATH | "
                     "arrayrecord:PATH (mimjax prepare imagenet; eval.test_split=validation)"),
    "eval.test_dataset": "a separate k-NN test set (same forms); '' = the dataset's test split",
    "eval.train_split": "k-NN training split (TFDS)",
    "eval.test_split": "k-NN test split (TFDS: e.g. validation for imagenet2012)",
    "eval.data_dir": "TFDS data_dir of the k-NN sets",
    "eval.num_train": "k-NN training images: the first N, decoded once and kept in host memory (-1 = all)",
    "eval.num_test": "k-NN test images: the first N (-1 = all)",
    "eval.k": "neighbours that vote in the k-NN",
    "eval.temperature": "each k-NN vote weighs exp(cosine / temperature)",
    "eval.pool": "k-NN features: token (normed cls token) | avg (mean patch token)",
    "eval.batch_size": "global k-NN batch, a multiple of the devices the batch is split over",
    "profile.start_step": "the jax.profiler trace starts after this step",
    "profile.num_steps": "steps traced into W/tb/plugins/profile (TensorBoard's profile tab); 0 = off",
}


def fill_missing(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds keys a config from an older mimjax lacks, with their defaults (and warns), and
    sets an unset teacher.block / teacher.head where the teacher is known without reading its
    checkpoint (`follow_teacher(read=False)`; `preflight` does the rest)."""
    return follow_teacher(schema.fill_missing(config, base_config()), read=False)


def teacher_indices(depth: int, heads: int) -> tuple[int, int]:
    """The authors' teacher block and head (9 and 11 of ViT-B's 12 blocks and 12 heads) for a
    teacher of this depth and head count: the block three quarters deep, the last head."""
    return 3 * depth // 4, heads - 1


def follow_teacher(c: ml_collections.ConfigDict, *, read: bool = True) -> ml_collections.ConfigDict:
    """`c` with teacher.block / teacher.head left unset (None) set from the teacher's
    architecture (`teacher_indices` of `teacher.describe`: the student for an ema / self
    teacher, teacher.name for a checkpoint without a run's config). read=False leaves them
    unset when only the checkpoint at teacher.path can say (its run's config.json); so does an
    unknown model.name or teacher.name (`validate` names it). With no teacher in use they are
    the authors' ViT-B choice, 9 and 11: unused, and what runs of earlier mimjax saved (a run
    resumes only with the teacher keys it started with)."""
    t = c.teacher
    if t.block is not None and t.head is not None:
        return c
    if not teacher.uses_teacher(c):
        block, head = teacher_indices(12, 12)
    else:
        known = c.model.name[:4] == "mae_" and c.model.name[4:] in VIT_VARIANTS and (
            t.source != "checkpoint" or t.name in VIT_VARIANTS)
        if not known or (not read and t.source == "checkpoint" and t.path):
            return c
        _, depth, heads, _ = teacher.describe(c)
        block, head = teacher_indices(depth, heads)
    t.block = block if t.block is None else t.block
    t.head = head if t.head is None else t.head
    return c


def _setting(value, key: str, kind):
    """A remat / accum_steps value as written (bool / int, or a string from the command line)
    -> the bool or int, or "auto"; anything else is a ValueError naming the key."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "auto":
            return "auto"
        if kind is bool and v in ("true", "false", "1", "0"):
            return v in ("true", "1")
        if kind is int and v.lstrip("-").isdigit():
            value = int(v)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    expected = "True, False or 'auto'" if kind is bool else "an integer >= 1 or 'auto'"
    raise ValueError(f"config.{key}={value!r}: expected {expected}")


def settings(cfg) -> tuple:
    """(remat, accum_steps) of a config: each a bool / int, or "auto"."""
    return (_setting(cfg.model.remat, "model.remat", bool),
            _setting(cfg.optimizer.accum_steps, "optimizer.accum_steps", int))


def set_fields(c, remat, accum_steps):
    """model.remat / optimizer.accum_steps set to these values, "auto" or not, in fields of any
    type (`setting_field`), whatever the fields held (a config from `to_dict` has a bool and an int)."""
    with c.unlocked():
        del c.model["remat"], c.optimizer["accum_steps"]
        c.model.remat, c.optimizer.accum_steps = setting_field(remat), setting_field(accum_steps)
    return c


def concrete(cfg) -> ml_collections.ConfigDict:
    """`cfg` with model.remat a bool and optimizer.accum_steps an int (a copy when a field held
    a string, e.g. "False" from the command line); "auto" is a ValueError: a step is built
    only once the setting is chosen (`mimjax.train.plan.resolve_auto`)."""
    remat, accum = settings(cfg)
    if "auto" in (remat, accum):
        raise ValueError("model.remat / optimizer.accum_steps = 'auto' is chosen when the step is compiled for its "
                         "devices (mimjax.train.plan.resolve_auto, as `mimjax train` does); set them to build a step")
    if type(cfg.model.remat) is bool and type(cfg.optimizer.accum_steps) is int:
        return cfg
    return set_fields(ml_collections.ConfigDict(cfg.to_dict()), remat, accum)


def _ratio_pair(key, pair):
    if len(pair) != 2 or not all(0.0 <= float(v) <= 1.0 for v in pair):
        _fail(key, tuple(pair), "a (start, end) pair of fractions in [0, 1]")


def validate(c: ml_collections.ConfigDict, *, num_devices: int = 1, process_count: int = 1) -> None:
    """Raises ConfigError for a config that cannot run on `num_devices` devices in
    `process_count` processes: keys, types, ranges, shapes and combinations. Pure: it reads
    no file and no network (`mimjax plan` checks a config for a machine it is not on); what
    the run reads is `preflight`'s."""
    schema.check_keys(c, base_config(), "mimjax/train/config.py")
    schema.check_seed(c.seed)
    try:
        remat, accum = settings(c)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if (c.total_steps > 0) == (c.total_epochs > 0):
        _fail("total_steps", c.total_steps, f"exactly one of total_steps / total_epochs > 0 "
              f"(total_epochs={c.total_epochs})")
    pc = c.parallelism
    if pc.mode not in ("jit", "pmap"):
        _fail("parallelism.mode", pc.mode, "'jit' or 'pmap'")
    if pc.mode == "pmap" and (pc.fsdp, pc.model) != (1, 1):
        _fail("parallelism.mode", pc.mode, "fsdp = model = 1 (pmap replicates the state); use 'jit' for FSDP")
    from mimjax.parallel.mesh import mesh_shape  # jax-free arithmetic; avoids an import cycle at load

    try:
        data, fsdp, _ = mesh_shape(pc, num_devices)
    except ValueError as e:
        raise ConfigError(f"config.parallelism: {e}") from None
    batch_devices = data * fsdp if pc.mode == "jit" else num_devices
    step_split = batch_devices * (1 if accum == "auto" else accum)
    if c.batch_size <= 0 or c.batch_size % step_split or c.batch_size % process_count:
        _fail("batch_size", c.batch_size, f"a positive multiple of the {batch_devices} devices the batch is split over"
              f" x {accum} accumulation steps, and of the {process_count} processes")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if c[key] <= 0:
            _fail(key, c[key], "a positive integer")
    if c.model.arch not in ARCHS:
        _fail("model.arch", c.model.arch, f"one of {sorted(ARCHS)}")
    if c.model.arch == "simmim" and c.model.gpa_head_late_start:
        _fail("model.gpa_head_late_start", True, "False for model.arch='simmim' (a quirk of the released GPA-MAE code)")
    name = c.model.name
    if not name.startswith("mae_") or name[4:] not in VIT_VARIANTS:
        _fail("model.name", name, f"one of {['mae_' + n for n in VIT_VARIANTS]}")
    if c.model.attention not in ATTENTION_IMPLEMENTATIONS:
        _fail("model.attention", c.model.attention, " | ".join(ATTENTION_IMPLEMENTATIONS))
    if not isinstance(c.model.init_from, str):  # read (and checked) by step.build, only at a fresh start
        _fail("model.init_from", c.model.init_from, "a path: a run directory or a .pth / .safetensors file, or ''")
    try:
        resolve_scan(c.model.scan, remat=False, backend="cpu")
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    if c.model.dtype not in ("float32", "bfloat16", "float16", "auto"):
        _fail("model.dtype", c.model.dtype, "float32, bfloat16, float16 or auto")
    patch = c.model.patch_size or VIT_VARIANTS[name[4:]][0]
    if c.model.img_size <= 0 or c.model.img_size % patch:
        _fail("model.img_size", c.model.img_size, f"a positive multiple of the patch size {patch}")
    if not 0.0 < c.masking.mask_ratio < 1.0:
        _fail("masking.mask_ratio", c.masking.mask_ratio, "a fraction in (0, 1)")
    _ratio_pair("masking.hard", c.masking.hard)
    _ratio_pair("masking.soft", c.masking.soft)
    if c.masking.strategy not in ("random", "gpa", "high"):
        _fail("masking.strategy", c.masking.strategy, "random, gpa or high")
    if c.masking.progress not in ("epoch", "step"):
        _fail("masking.progress", c.masking.progress, "epoch or step")
    if c.teacher.source not in ("none", "checkpoint", "ema", "self"):
        _fail("teacher.source", c.teacher.source, "none, checkpoint, ema or self")
    needs_teacher = teacher.uses_teacher(c)
    if needs_teacher and c.teacher.source == "none":
        _fail("teacher.source", "none", f"a teacher (checkpoint, ema or self) for "
              f"masking.strategy={c.masking.strategy!r} / model.gpa_head={c.model.gpa_head}")
    if c.teacher.path and c.teacher.source != "checkpoint":
        _fail("teacher.path", c.teacher.path, f"empty unless teacher.source='checkpoint' (teacher.source="
              f"{c.teacher.source!r} would ignore it); set --config.teacher.source=checkpoint or drop teacher.path")
    if c.teacher.source == "checkpoint" and c.teacher.name not in VIT_VARIANTS:
        _fail("teacher.name", c.teacher.name, f"one of {sorted(VIT_VARIANTS)}")
    if needs_teacher and not (c.teacher.source == "checkpoint" and c.teacher.path):  # a path: preflight reads it
        _check_teacher_dims(c)
    if not 0.0 <= c.teacher.ema_momentum < 1.0:
        _fail("teacher.ema_momentum", c.teacher.ema_momentum, "a value in [0, 1)")
    if c.optimizer.nonfinite not in ("halt", "skip"):
        _fail("optimizer.nonfinite", c.optimizer.nonfinite, "halt or skip")
    from mimjax.train.schedule import check_learning_rates  # lr > 0 and finite, or -1 (unset: from blr)

    check_learning_rates(c.optimizer)
    if c.data.source not in ("tfds", "folder", "embedded", "embedded_faces", "synthetic") and not (
            c.data.source.startswith(("arrayrecord:", "idx:")) and len(c.data.source.partition(":")[2]) > 0):
        _fail("data.source", c.data.source, "tfds, folder, embedded, embedded_faces, synthetic or "
              "arrayrecord:PATH (`mimjax prepare imagenet`) or idx:DIR (an IDX data set)")
    _validate_monitoring(c, batch_devices, process_count)


def _check_teacher_dims(c) -> None:
    """The teacher's patch size, block and head against the student and the teacher's own depth
    (an unset block or head: the one `follow_teacher` will set)."""
    patch = teacher.encoder_dims(c.model)[2]
    arch, depth, heads, teacher_patch = teacher.describe(c)
    block, head = (value if value is not None else derived
                   for value, derived in zip((c.teacher.block, c.teacher.head), teacher_indices(depth, heads)))
    if teacher_patch != patch:
        _fail("teacher.path" if c.teacher.source == "checkpoint" else "teacher.source", c.teacher.path or
              c.teacher.source, f"a teacher with the student's patch size {patch} (the {arch} teacher has "
              f"{teacher_patch}): GPA scores are per student patch")
    if not 0 <= block < depth:
        _fail("teacher.block", block, f"a block index in [0, {depth}) for the {arch} teacher")
    if not -1 <= head < heads:
        _fail("teacher.head", head, f"a head index in [0, {heads}) or -1 (mean) for the {arch} teacher")


def preflight(c: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for what a `validate`d config would read and cannot: a checkpoint
    teacher's path (reachable, existing, a run or `mimjax import` directory, with dimensions
    that fit), the data folder, the k-NN evaluation's folder, the wandb package. Reads disk
    and, for gs:// paths, the network; `mimjax train` calls it after `validate`. Then sets a
    teacher.block / teacher.head left unset from the teacher's architecture (`follow_teacher`:
    a checkpoint teacher's is known once its path is read)."""
    if c.teacher.source == "checkpoint":
        path = c.teacher.path
        if not path:
            _fail("teacher.path", path, "the path of a teacher checkpoint (teacher.source='checkpoint')")
        paths.check_reachable(path, "config.teacher.path")
        if not paths.exists(path):
            _fail("teacher.path", path, "an existing path (it does not exist)")
        if teacher.uses_teacher(c):
            # an empty or foreign directory says so, not a mismatch against teacher.name's architecture
            if paths.isdir(path) and not workdir.has_checkpoint(path):
                raise ConfigError(f"config.teacher.path={path!r}: not a mimjax run directory (no complete checkpoint "
                                  f"in its checkpoints/); expected a pre-training run directory or a `mimjax import` "
                                  f"directory")
            _check_teacher_dims(c)
    follow_teacher(c)
    if c.data.source == "folder" and not os.path.isdir(c.data.folder):
        _fail("data.folder", c.data.folder, "an existing directory of images")
    if c.eval.every:
        kind, _, arg = c.eval.dataset.partition(":")
        if kind == "folder" and not os.path.isdir(arg):
            _fail("eval.dataset", c.eval.dataset, "an existing directory of class folders")
    if "wandb" in parse_writers(c.writers):
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            _fail("writers", c.writers, "wandb installed for the 'wandb' writer: pip install 'mimjax[wandb]'")


def _validate_monitoring(c, batch_devices: int, process_count: int) -> None:
    try:
        names = parse_writers(c.writers)
    except ValueError as e:
        _fail("writers", c.writers, f"a comma-separated list of jsonl, tensorboard, wandb: {str(e).split(' (')[0]}")
    if not names:
        _fail("writers", c.writers, "at least one of jsonl, tensorboard, wandb")
    if c.wandb.mode not in ("", "online", "offline", "disabled"):
        _fail("wandb.mode", c.wandb.mode, "'', online, offline or disabled")
    if not (math.isfinite(c.telemetry.peak_tflops) and c.telemetry.peak_tflops >= 0):
        _fail("telemetry.peak_tflops", c.telemetry.peak_tflops, "a peak in TFLOP/s per device > 0, or 0 (the device's)")
    if not 0.0 <= c.telemetry.input_warn_frac <= 1.0:
        _fail("telemetry.input_warn_frac", c.telemetry.input_warn_frac, "a share in [0, 1]")
    if c.eval.every < 0:
        _fail("eval.every", c.eval.every, "steps between k-NN evaluations, >= 0 (0 = off)")
    if c.eval.every:
        kind, _, arg = c.eval.dataset.partition(":")
        if not (c.eval.dataset == "embedded_faces" or (kind in ("tfds", "folder", "arrayrecord", "idx") and arg)):
            _fail("eval.dataset", c.eval.dataset,
                  "a labelled set: embedded_faces, tfds:NAME, folder:PATH, idx:DIR or arrayrecord:PATH")
        if c.eval.pool not in ("token", "avg"):
            _fail("eval.pool", c.eval.pool, "token or avg")
        if c.eval.k < 1:
            _fail("eval.k", c.eval.k, "an integer >= 1")
        if not c.eval.temperature > 0:
            _fail("eval.temperature", c.eval.temperature, "a positive number")
        if c.eval.num_train == 0 or c.eval.num_test == 0:
            _fail("eval.num_train" if c.eval.num_train == 0 else "eval.num_test", 0, "a positive number of images or -1 (all)")
        if c.eval.batch_size <= 0 or c.eval.batch_size % batch_devices or c.eval.batch_size % process_count:
            _fail("eval.batch_size", c.eval.batch_size, f"a positive multiple of the {batch_devices} devices the batch "
                  f"is split over and of the {process_count} processes")
    if c.profile.num_steps < 0 or c.profile.start_step < 0:
        key = "profile.num_steps" if c.profile.num_steps < 0 else "profile.start_step"
        _fail(key, c.profile[key.split(".")[1]], "an integer >= 0 (profile.num_steps = 0: off)")


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a recipe to a smoke run of the same method on the embedded photos (CPU, ~1 min)."""
    c.batch_size = 8
    c.total_steps, c.total_epochs = 6, -1
    c.log_every, c.checkpoint_every = 2, 3
    c.optimizer.warmup_epochs, c.optimizer.warmup_steps = -1, 2
    c.model.img_size, c.model.patch_size, c.model.depth = 32, 8, 2
    c.model.width, c.model.num_heads = 64, 4
    c.model.decoder_width, c.model.decoder_depth, c.model.decoder_heads = 32, 2, 4
    c.model.remat = False
    c.data.source = "embedded"
    if c.teacher.source != "checkpoint":  # the recipe's block / head, or unset: from this tiny student
        t = c.teacher
        t.block, t.head = (None if v is None else min(v, cap) for v, cap in ((t.block, 1), (t.head, 3)))
    return c
