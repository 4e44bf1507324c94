"""The config schema every recipe starts from, and its validation.

Recipes in `configs/` call `base_config()` and change values. Before anything is started,
`validate(config, ...)` checks the config itself (pure: no file, no network) and `preflight(config)`
what the run will read (teacher, data folders); each raises `ConfigError` with one line naming
the key and value. `mimjax train` calls both, `mimjax plan` only `validate`.
Top-level keys (stable): seed, batch_size, total_steps, total_epochs, log_every,
checkpoint_every, parallelism, model, data, masking, teacher, optimizer (+ a few extras
documented inline). Integer durations use -1 for "not set".
"""
from __future__ import annotations

import os

import ml_collections

from mimjax import paths, schema, workdir
from mimjax.models import ARCHS
from mimjax.models.layers import ATTENTION_IMPLEMENTATIONS
from mimjax.models.vit import VIT_VARIANTS
from mimjax.train import teacher
from mimjax.train.writers import parse_writers
from mimjax.schema import ConfigError, fail as _fail  # noqa: F401 (ConfigError: re-exported)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4096  # global, over all processes and devices (one optimizer step)
    c.total_steps = -1  # set exactly one of total_steps / total_epochs
    c.total_epochs = -1
    c.log_every = 50  # steps between metrics fetches (the only host syncs)
    c.checkpoint_every = 1000  # steps; also at the end and on SIGTERM
    c.keep_checkpoints = 3
    c.snapshot_every = 0  # steps between reconstruction PNGs (0: only at the end)
    c.parallelism = ml_collections.ConfigDict()
    c.parallelism.mode = "jit"  # jit: mesh + sharding rules (mimjax/parallel/mesh.py) | pmap: replicated data-parallel
    c.parallelism.data = -1  # mesh axis sizes for jit; -1 = all remaining devices
    c.parallelism.fsdp = 1  # parameters + optimizer state sharded over this axis
    c.parallelism.model = 1  # tensor parallel (attention heads, MLP hidden)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "mae"  # mae (encoder on visible patches + decoder) | simmim (mask token in the encoder, linear head, L1)
    c.model.name = "mae_vit_base_patch16"  # the encoder, "mae_<vit>" for every arch
    c.model.img_size = 224
    c.model.patch_size = 0  # 0: from the name; likewise width / depth / num_heads
    c.model.width = 0
    c.model.depth = 0
    c.model.num_heads = 0
    c.model.decoder_width = 512  # decoder_* and gpa_head_late_start: MAE only
    c.model.decoder_depth = 8
    c.model.decoder_heads = 16
    c.model.norm_pix_loss = True
    c.model.gpa_head = False  # "teacher + feature": predict the GPA map (docs/method.md §4)
    c.model.gpa_head_late_start = False  # released-code quirk: head blocks only after t > 0.75
    # The mixed-precision policy, one key (models/precision.py): the dtype of the
    # operands of every matrix product, accumulated in float32; parameters, optimizer state,
    # LayerNorm, softmax, losses and GPA scores are float32 whatever it is. "auto": bfloat16 on
    # GPU/TPU and on CPUs with native bf16 (avx512_bf16 / amx_bf16), else float32.
    c.model.dtype = "float32"  # float32 | bfloat16 | float16 | auto
    c.model.remat = False  # activation checkpointing per block; recipes may hold "auto" (train/plan.py)
    c.model.scan = False  # lax.scan over the blocks: one compiled block (ViT-L/H compile time)
    c.model.attention = "auto"  # auto | explicit | xla | cudnn (cuDNN flash attention, GPU); see models/layers.py
    c.model.init_from = ""  # start from: a run dir, an MAE / timm .pth / .safetensors (train/init_from.py)

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"  # tfds | folder | embedded | embedded_faces | synthetic | arrayrecord:PATH
    c.data.name = "imagenet2012"  # TFDS name
    c.data.split = "train"
    c.data.data_dir = ""  # TFDS data_dir ("" = TFDS default)
    c.data.manual_dir = ""  # where imagenet2012's tar files are, for its first preparation
    c.data.folder = ""  # image folder (class-per-folder or flat)
    c.data.synthetic_size = 1281167
    c.data.num_examples = -1  # examples per epoch; -1: the source's length
    c.data.prefetch = 2  # batches put on device ahead of the step

    c.masking = ml_collections.ConfigDict()
    c.masking.strategy = "random"  # random (MAE) | gpa | high (AttMask on the teacher's cls attention)
    c.masking.mask_ratio = 0.75
    c.masking.hard = (0.0, 0.5)  # GPA hard share at progress 0 -> 1
    c.masking.soft = (0.3, 0.0)  # GPA soft share at progress 0 -> 1
    c.masking.progress = "epoch"  # epoch (authors: t = epoch / epochs) | step

    c.teacher = ml_collections.ConfigDict()
    c.teacher.source = "none"  # none | checkpoint (frozen) | ema | self
    c.teacher.path = ""  # checkpoint: a mimjax workdir or an imported teacher directory
    c.teacher.name = "vit_base_patch16"  # architecture of a checkpoint teacher
    c.teacher.block = 9  # GPA block, 0-indexed
    c.teacher.head = 11  # GPA head; -1 = mean over heads (ours: the authors' code takes one head)
    c.teacher.ema_momentum = 0.996

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.blr = 1.5e-4  # lr = blr * batch_size / 256
    c.optimizer.lr = -1.0  # absolute lr, overrides blr when > 0; -1 = unset (the only other value allowed)
    c.optimizer.min_lr = 0.0
    c.optimizer.warmup_epochs = 40
    c.optimizer.warmup_steps = -1  # overrides warmup_epochs when >= 0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip = 0.0  # global-norm clipping; 0 = off
    c.optimizer.accum_steps = 1  # gradient accumulation: micro-batches per step; recipes may hold "auto" (train/plan.py)
    c.optimizer.nonfinite = "halt"  # non-finite loss/grads: halt (stop, keep last good checkpoint) | skip

    # Monitoring (mimjax.train.writers, knn_eval; none of it changes the training trajectory).
    c.writers = "jsonl,tensorboard"  # comma-separated: jsonl (W/metrics.jsonl) | tensorboard (W/tb) | wandb ([wandb] extra)
    c.wandb = ml_collections.ConfigDict()
    c.wandb.project = "mimjax"
    c.wandb.name = ""  # the run's display name ("" = W&B's)
    c.wandb.entity = ""
    c.wandb.mode = ""  # "" (WANDB_MODE or online) | online | offline (nothing sent; `wandb sync` later) | disabled
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0  # steps between k-NN evaluations of the encoder (knn_top1 rows); 0 = off
    c.eval.dataset = "embedded_faces"  # labelled set, as `mimjax eval knn --dataset`: embedded_faces | tfds:NAME | folder:PATH
    c.eval.test_dataset = ""  # a separate test set (same forms); "" = the dataset's test split (or every 4th image)
    c.eval.train_split = "train"
    c.eval.test_split = "test"  # TFDS: e.g. "validation" for imagenet2012
    c.eval.data_dir = ""
    c.eval.num_train = 10000  # first N images of each side (-1 = all): decoded once, kept in host memory
    c.eval.num_test = 2000
    c.eval.k = 20
    c.eval.temperature = 0.07
    c.eval.pool = "token"  # token (cls) | avg (mean patch token)
    c.eval.batch_size = 256  # global, a multiple of the devices the batch is split over
    c.profile = ml_collections.ConfigDict()
    c.profile.start_step = 10  # jax.profiler trace of the steps start_step+1 .. start_step+num_steps
    c.profile.num_steps = 0  # 0 = off; the trace lands in W/tb/plugins/profile/<run>/ (TensorBoard's profile tab)
    return c


def fill_missing(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds keys a config from an older mimjax lacks, with their defaults, and warns."""
    return schema.fill_missing(config, base_config())


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
    """model.remat / optimizer.accum_steps set to these values, "auto" or not: the fields take
    the type of the value (a bool field cannot hold "auto" otherwise)."""
    with c.unlocked():
        del c.model["remat"], c.optimizer["accum_steps"]
        c.model.remat, c.optimizer.accum_steps = remat, accum_steps
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
            c.data.source.startswith("arrayrecord:") and len(c.data.source) > len("arrayrecord:")):
        _fail("data.source", c.data.source, "tfds, folder, embedded, embedded_faces, synthetic or "
              "arrayrecord:PATH (`mimjax prepare imagenet`)")
    _validate_monitoring(c, batch_devices, process_count)


def _check_teacher_dims(c) -> None:
    """The teacher's patch size, block and head against the student and the teacher's own depth."""
    patch = teacher.encoder_dims(c.model)[2]
    arch, depth, heads, teacher_patch = teacher.describe(c)
    if teacher_patch != patch:
        _fail("teacher.path" if c.teacher.source == "checkpoint" else "teacher.source", c.teacher.path or
              c.teacher.source, f"a teacher with the student's patch size {patch} (the {arch} teacher has "
              f"{teacher_patch}): GPA scores are per student patch")
    if not 0 <= c.teacher.block < depth:
        _fail("teacher.block", c.teacher.block, f"a block index in [0, {depth}) for the {arch} teacher")
    if not -1 <= c.teacher.head < heads:
        _fail("teacher.head", c.teacher.head, f"a head index in [0, {heads}) or -1 (mean) for the {arch} teacher")


def preflight(c: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for what a `validate`d config would read and cannot: a checkpoint
    teacher's path (reachable, existing, a run or `mimjax import` directory, with dimensions
    that fit), the data folder, the k-NN evaluation's folder, the wandb package. Reads disk
    and, for gs:// paths, the network; `mimjax train` calls it after `validate`."""
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
    if c.eval.every < 0:
        _fail("eval.every", c.eval.every, "steps between k-NN evaluations, >= 0 (0 = off)")
    if c.eval.every:
        kind, _, arg = c.eval.dataset.partition(":")
        if not (c.eval.dataset == "embedded_faces" or (kind in ("tfds", "folder") and arg)):
            _fail("eval.dataset", c.eval.dataset, "a labelled set: embedded_faces, tfds:NAME or folder:PATH")
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
    if c.teacher.source != "checkpoint":
        c.teacher.block, c.teacher.head = min(c.teacher.block, 1), min(c.teacher.head, 3)
    return c
