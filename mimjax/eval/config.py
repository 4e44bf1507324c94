"""The config schema of `mimjax finetune` and `mimjax eval linprobe` (`base_config`, with
MAE's ViT-B fine-tuning values as defaults; `MEANINGS` says what each key means, and `mimjax
config show --config linprobe` prints a config with them), `runlocal`, and `validate`, which
raises a one-line `ConfigError` naming the key and value before anything starts: `check`, the
config itself (what `config show` runs), then `preflight`, what the run reads."""
from __future__ import annotations

import os

import ml_collections

from mimjax import schema, workdir
from mimjax.train.config import MEANINGS as PRETRAIN_MEANINGS
from mimjax.schema import ConfigError, fail as _fail, in_range as _in_range

POOLS, OPTIMIZERS, SOURCES = ("avg", "token"), ("adamw", "lars", "sgd"), ("tfds", "folder", "embedded_faces")


def base_config() -> ml_collections.ConfigDict:
    """The schema of fine-tune and linear-probe configs; defaults: MAE fine-tuning of ViT-B.
    Each key's meaning is in MEANINGS (`mimjax config show`)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = ""
    c.batch_size = 1024
    c.eval_batch_size = 1024
    c.total_epochs = 100
    c.total_steps = -1
    c.log_every = 50
    c.checkpoint_every = 1000
    c.eval_every_epochs = 1
    c.keep_checkpoints = 2
    c.pool = "avg"
    c.num_classes = -1
    c.parallelism = ml_collections.ConfigDict({"mode": "jit", "data": -1, "fsdp": 1, "model": 1})
    c.model = ml_collections.ConfigDict()
    c.model.img_size = 0
    c.model.drop_path = 0.1
    c.model.head_init_std = 2e-5
    c.model.dtype = "float32"
    c.model.remat = False
    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"
    c.data.name = "imagenet2012"
    c.data.train_split = "train"
    c.data.test_split = "validation"
    c.data.data_dir = ""
    c.data.folder = ""
    c.data.test_folder = ""
    c.data.prefetch = 2
    c.data.crop = "torchvision"
    c.data.randaugment = ""
    c.augment = ml_collections.ConfigDict()
    c.augment.mixup = 0.8
    c.augment.cutmix = 1.0
    c.augment.mix_prob = 1.0
    c.augment.switch_prob = 0.5
    c.augment.label_smoothing = 0.1
    c.augment.reprob = 0.25
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.blr = 5e-4
    c.optimizer.lr = -1.0
    c.optimizer.min_lr = 1e-6
    c.optimizer.warmup_epochs = 5
    c.optimizer.warmup_steps = -1
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.05
    c.optimizer.layer_decay = 0.65
    c.optimizer.grad_clip = 0.0
    return c


# Each key of `base_config`, dotted, with its one-line meaning (`mimjax config show` prints them
# beside the values). "fine-tune only": the linear probe's frozen encoder and fixed head ignore it.
MEANINGS = {
    "seed": "all randomness: head init, data order, augmentation",
    "init": "the pre-trained encoder: a pre-training workdir or `mimjax import` directory (set by --workdir)",
    "batch_size": "global batch of one optimizer step, over all processes and devices",
    "eval_batch_size": "global batch of the test-split evaluation",
    "total_epochs": "run length in epochs; set exactly one of total_steps / total_epochs (-1 = unset)",
    "total_steps": "run length in steps; set exactly one of total_steps / total_epochs (-1 = unset)",
    "log_every": "steps between metrics fetches and log rows",
    "checkpoint_every": "steps between checkpoints; also at the end and on SIGTERM",
    "eval_every_epochs": "the test split every N epochs and after the last step (best and final kept); 0 = last only",
    "keep_checkpoints": "how many checkpoints are kept",
    "pool": "the feature: avg (LayerNorm of the mean patch token, MAE's fc_norm) | token (the normed cls token)",
    "num_classes": "classes of the head; -1 = from the dataset",
    "parallelism.mode": "jit (the classifiers run as one jit program; mimjax/parallel/mesh.py)",
    "parallelism.data": "data-parallel mesh axis size; -1 = all remaining devices",
    "parallelism.fsdp": "mesh axis over which parameters and optimizer state are sharded (FSDP)",
    "parallelism.model": "tensor-parallel mesh axis (attention heads, MLP hidden)",
    "model.img_size": "input image size in pixels; 0 = the pre-training size",
    "model.drop_path": "stochastic depth rate of the encoder (fine-tune only)",
    "model.head_init_std": "std of the fine-tune head's trunc-normal init (the probe's is MAE's fixed 0.01)",
    "model.dtype": "operand dtype of the encoder's matrix products: float32 | bfloat16 | float16",
    "model.remat": "activation checkpointing per encoder block (fine-tune only)",
    "data.source": "tfds | folder | embedded_faces (every 4th image is a test image) | idx:DIR | arrayrecord:PATH",
    "data.name": "TFDS dataset name (data.source=tfds)",
    "data.train_split": "the training split (tfds, idx, arrayrecord)",
    "data.test_split": "the evaluated split (tfds, idx, arrayrecord)",
    "data.data_dir": "TFDS data_dir ('' = TFDS default)",
    "data.folder": "class-per-folder training images (data.source=folder)",
    "data.test_folder": "class-per-folder test images; '' with a folder: every 4th image of data.folder",
    "data.prefetch": "batches put on the devices ahead of the step",
    "data.crop": "the training crop's draw: torchvision (MAE fine-tune) | mae (MAE's util/crop.py, its linear probe)",
    "data.randaugment": "timm RandAugment of the training crops on the host, e.g. rand-m9-mstd0.5-inc1; '' = off",
    "augment.mixup": "mixup Beta alpha, on device; 0 = off (fine-tune only)",
    "augment.cutmix": "cutmix Beta alpha; 0 = off (fine-tune only)",
    "augment.mix_prob": "probability that a batch is mixed (fine-tune only)",
    "augment.switch_prob": "probability of cutmix rather than mixup when both are on (fine-tune only)",
    "augment.label_smoothing": "label smoothing of the targets",
    "augment.reprob": "random erasing probability per image (fine-tune only)",
    "optimizer.name": "adamw | lars (MAE's linear probe) | sgd (momentum)",
    **{k: PRETRAIN_MEANINGS[k] for k in ("optimizer.blr", "optimizer.lr", "optimizer.min_lr", "optimizer.warmup_epochs",
                                         "optimizer.warmup_steps", "optimizer.b1", "optimizer.b2")},  # the same
    "optimizer.momentum": "momentum of lars and sgd",
    "optimizer.weight_decay": "weight decay (kernels only)",
    "optimizer.layer_decay": ("layer-wise lr decay: block i's lr x layer_decay ** (depth - i), the patch "
                              "embedding's ** (depth + 1); 1 = off (fine-tune only)"),
    "optimizer.grad_clip": "global-norm gradient clipping; 0 = off",
}


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a recipe to the embedded labelled faces (150 train / 50 test, 25x25): 60
    steps of 32, seconds on a CPU. The learning rate is the recipe's to set."""
    c.data.source = "embedded_faces"
    c.batch_size, c.eval_batch_size = 32, 64
    c.total_epochs, c.total_steps = 15, -1  # 4 steps an epoch
    c.log_every, c.checkpoint_every = 10, 30
    c.optimizer.warmup_epochs, c.optimizer.warmup_steps = 1, -1
    c.model.remat = False
    return c


def validate(c, *, num_devices: int = 1, process_count: int = 1) -> None:
    """Raises ConfigError (one line naming key and value) for anything that cannot run."""
    check(c, num_devices=num_devices, process_count=process_count)
    preflight(c)


def preflight(c) -> None:
    """ConfigError for what a `check`ed config reads and cannot: the encoder (`init`) and the
    image folders."""
    if not c.init:
        _fail("init", c.init, "the pre-trained encoder's directory (--workdir)")
    if not workdir.is_workdir(c.init):
        _fail("init", c.init, "a mimjax pre-training workdir or a `mimjax import` directory "
              "(config.json and checkpoints/ inside)")
    d = c.data
    for key in ("folder", "test_folder"):
        if (d[key] or (key == "folder" and d.source == "folder")) and not os.path.isdir(d[key]):
            _fail(f"data.{key}", d[key], "an existing class-per-folder directory of images")


def check(c, *, num_devices: int = 1, process_count: int = 1) -> None:
    """ConfigError for a config that cannot run on `num_devices` devices in `process_count`
    processes: keys, types, ranges and combinations. Pure: reads no file (`preflight` does)."""
    from mimjax.parallel.mesh import mesh_shape

    schema.check_keys(c, base_config(), "mimjax/eval/config.py")
    schema.check_seed(c.seed)
    if (c.total_steps > 0) == (c.total_epochs > 0):
        _fail("total_steps", c.total_steps, f"exactly one of total_steps / total_epochs > 0 "
              f"(total_epochs={c.total_epochs})")
    if c.parallelism.mode != "jit":
        _fail("parallelism.mode", c.parallelism.mode, "'jit' (classifiers run as one jit program)")
    try:
        data, fsdp, _ = mesh_shape(c.parallelism, num_devices)
    except ValueError as e:
        raise ConfigError(f"config.parallelism: {e}") from None
    for key in ("batch_size", "eval_batch_size"):
        if c[key] <= 0 or c[key] % (data * fsdp) or c[key] % process_count:
            _fail(key, c[key], f"a positive multiple of the {data * fsdp} devices the batch is split over "
                  f"and of the {process_count} processes")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if c[key] <= 0:
            _fail(key, c[key], "a positive integer")
    if c.eval_every_epochs < 0:
        _fail("eval_every_epochs", c.eval_every_epochs, "a number of epochs >= 0 (0: after the last step only)")
    if c.pool not in POOLS:
        _fail("pool", c.pool, " or ".join(POOLS))
    if c.num_classes == 0 or c.num_classes < -1:
        _fail("num_classes", c.num_classes, "a positive number of classes, or -1 (from the dataset)")
    m, a, o, d = c.model, c.augment, c.optimizer, c.data
    if m.img_size < 0:
        _fail("model.img_size", m.img_size, "a positive multiple of the patch size, or 0 (the pre-training size)")
    _in_range("model.drop_path", m.drop_path, 0.0, 0.999, "a rate in [0, 1)")
    if m.head_init_std <= 0:
        _fail("model.head_init_std", m.head_init_std, "a positive standard deviation")
    if m.dtype not in ("float32", "bfloat16", "float16"):
        _fail("model.dtype", m.dtype, "float32, bfloat16 or float16")
    for key in ("mixup", "cutmix"):
        if a[key] < 0:
            _fail(f"augment.{key}", a[key], "a Beta alpha >= 0 (0 = off)")
    for key in ("mix_prob", "switch_prob", "reprob"):
        _in_range(f"augment.{key}", a[key], 0.0, 1.0, "a probability in [0, 1]")
    _in_range("augment.label_smoothing", a.label_smoothing, 0.0, 0.999, "a fraction in [0, 1)")
    if o.name not in OPTIMIZERS:
        _fail("optimizer.name", o.name, ", ".join(OPTIMIZERS))
    from mimjax.train.schedule import check_learning_rates  # lr > 0 and finite, or -1 (unset: from blr)

    check_learning_rates(o)
    if o.lr <= 0 and o.blr <= 0:
        _fail("optimizer.blr", o.blr, "a positive base learning rate (or optimizer.lr > 0)")
    for key in ("min_lr", "weight_decay", "grad_clip"):
        if o[key] < 0:
            _fail(f"optimizer.{key}", o[key], "a value >= 0")
    if not 0.0 < o.layer_decay <= 1.0:
        _fail("optimizer.layer_decay", o.layer_decay, "a factor in (0, 1] (1 = no layer-wise decay)")
    for key in ("b1", "b2", "momentum"):
        _in_range(f"optimizer.{key}", o[key], 0.0, 0.9999, "a decay rate in [0, 1)")
    from mimjax.data.randaugment import parse as parse_randaugment

    try:
        parse_randaugment(d.randaugment)
    except ValueError as e:  # "'<spec>': <what is wrong>; expected ..."
        raise ConfigError(f"config.data.randaugment={e}") from None
    from mimjax.data.augment import CROP_DRAWS

    if d.crop not in CROP_DRAWS:
        _fail("data.crop", d.crop, " or ".join(CROP_DRAWS))
    if d.source not in SOURCES and not (d.source.startswith(("arrayrecord:", "idx:")) and d.source.partition(":")[2]):
        _fail("data.source", d.source, ", ".join(SOURCES) + ", arrayrecord:PATH or idx:DIR (labelled data)")
