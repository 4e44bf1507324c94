"""MAE linear probing (`main_linprobe.py`), and the classifier loop fine-tuning shares.

    mimjax eval linprobe --config configs/linprobe.py --workdir W

A frozen encoder (gradients stopped, run every step on RandomResizedCrop + flip) gives the
normed cls token (pool="token", MAE's default) or the normed mean patch token; the head is
BatchNorm without affine (eps 1e-6) + a linear layer (trunc-normal std 0.01, zero bias).
LARS (MAE util/lars.py), blr 0.1, lr = blr * batch / 256, no weight decay, warm-up then
cosine; `optimizer.name` may pick sgd or adamw. Writes OUT (default W/linprobe/):
config.json, metrics.jsonl, checkpoints/ (a restart resumes), linprobe.json; and
W/linprobe.json (top-1 / top-5 on the test split), as `eval knn` writes W/knn.json.

`fit` below is the loop both classifiers run (big_vision order: config -> input -> model
and optimizer -> restore -> loop -> evaluation); a `Task` says what differs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mimjax import data, parallel
from mimjax.train import metrics
from mimjax.train import optim
from mimjax.train.checkpoint import Checkpointer
from mimjax.eval.config import ConfigError, validate
from mimjax.train.schedule import Schedule, lr_schedule

log = logging.getLogger("mimjax")
# MAE's main_linprobe.py and main_finetune.py crop with timm/torchvision's default area range.
FINETUNE_CROP_SCALE = (0.08, 1.0)


@flax.struct.dataclass
class ClassifierState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # what trains: encoder + head (fine-tuning) or the head (linear probe)
    opt_state: Any
    batch_stats: Any  # the probe's BatchNorm statistics; {} when fine-tuning

    @classmethod
    def create(cls, params, tx, batch_stats=None):
        return cls(jnp.zeros((), jnp.int32), params, tx.init(params), {} if batch_stats is None else batch_stats)

    def apply_gradients(self, grads, tx, **changes):
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state, **changes)


@dataclasses.dataclass(frozen=True)
class Task:
    """What differs between the classifiers; every function is pure (jitted by `fit`)."""

    name: str  # the result file OUT/<name>.json
    img_size: int
    encoder_params: Any  # the pre-trained encoder's weights
    init_state: Callable  # encoder_params -> ClassifierState
    train_step: Callable  # (state, batch, frozen, key) -> (state, metrics); frozen = encoder_params or None
    logits: Callable  # (state, images [B, S, S, 3], frozen) -> [B, C]
    frozen_encoder: bool  # steps read encoder_params as a frozen argument


def load_encoder(path: str, *, img_size: int = 0, drop_path: float = 0.0, dtype: str = "float32",
                 remat: bool = False):
    """(encoder module, its params) of a pre-training workdir or a `mimjax import` directory
    (both hold config.json and checkpoints/); img_size 0 keeps the pre-training size."""
    from mimjax import workdir
    from mimjax.train import teacher
    from mimjax.models import model_from_config

    mc = workdir.model_config(path)
    if mc is None:
        raise ConfigError(f"config.init={path!r}: expected a mimjax workdir or `mimjax import` directory "
                          f"(no config.json inside)")
    encoder = model_from_config(mc).encoder.clone(img_size=img_size or mc.img_size, drop_path=drop_path,
                                                  dtype=jnp.dtype(dtype), remat=remat)
    try:
        return encoder, teacher.load_checkpoint_params(path, encoder)
    except ValueError as e:
        raise ConfigError(f"config.init={path!r}: {e}") from e


def labelled_data(c):
    """(train source, test source, number of classes) of a config's `data` section."""
    from mimjax.data.labelled import labelled_sources

    d = c.data
    spec = {"tfds": f"tfds:{d.name}", "folder": f"folder:{d.folder}"}.get(d.source, d.source)
    try:
        train, test = labelled_sources(spec, test_dataset=f"folder:{d.test_folder}" if d.test_folder else "",
                                       train_split=d.train_split, test_split=d.test_split, data_dir=d.data_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if c.num_classes > 0:
        return train, test, c.num_classes
    src = getattr(train, "src", train)  # eval_main's every-4th split wraps the source
    if hasattr(src, "dataset_info"):  # TFDS
        return train, test, src.dataset_info.features["label"].num_classes
    if getattr(src, "classes", None):  # class-per-folder
        return train, test, len(src.classes)
    if hasattr(src, "labels"):  # embedded_faces
        return train, test, int(np.max(src.labels)) + 1
    raise ConfigError(f"config.num_classes=-1: the number of classes of data.source={d.source!r} is unknown; set it")


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiplies every update by its leaf of `scales` (a pytree of floats like the params)."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(o, lr_fn, scales=None) -> optax.GradientTransformation:
    """`optimizer.name`: adamw, lars (MAE util/lars.py: weight decay and trust ratio on
    kernels only, momentum) or sgd (momentum). Weight decay applies to kernels only
    (`optim.decay_mask`). `scales`: per-parameter lr multipliers (layer decay)."""
    if o.name == "adamw":
        tx = optax.adamw(lr_fn, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=optim.decay_mask)
    elif o.name == "lars":
        tx = optax.lars(lr_fn, weight_decay=o.weight_decay, weight_decay_mask=optim.decay_mask,
                        trust_ratio_mask=optim.decay_mask, momentum=o.momentum)
    else:
        tx = optax.chain(optax.add_decayed_weights(o.weight_decay, optim.decay_mask),
                         optax.sgd(lr_fn, momentum=o.momentum or None))
    if scales is not None:
        tx = optax.chain(tx, scale_by_tree(scales))
    if o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx


def evaluate(task: Task, state, frozen, test_src, c, par) -> dict:
    """Top-1 / top-5 accuracy (percent) on `test_src`: center crops, one pass, every batch
    padded to eval_batch_size (label -1), so one compilation and equal batch counts on
    every process."""
    pid, pcount = jax.process_index(), jax.process_count()
    local = c.eval_batch_size // pcount
    it = data.make_iterator(None, img_size=task.img_size, global_batch_size=c.eval_batch_size, seed=0,
                            train=False, source=test_src, process_index=pid, process_count=pcount)

    @jax.jit
    def hits(state, batch, frozen):  # (top-1 hits, top-5 hits), replicated scalars
        logits = task.logits(state, batch["image"], frozen)  # [B, C]
        top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]  # [B, k]
        hit = top == batch["label"][:, None]  # padding (-1) never hits
        return hit[:, 0].sum(), hit.any(axis=-1).sum()

    top1 = top5 = 0
    s = task.img_size
    for _ in range(-(-len(test_src) // c.eval_batch_size)):
        batch = next(it, {"image": np.zeros((0, s, s, 3), np.float32), "label": np.zeros((0,), np.int32)})
        pad = local - len(batch["label"])
        batch = {"image": np.pad(batch["image"], ((0, pad), (0, 0), (0, 0), (0, 0))),
                 "label": np.pad(batch["label"], (0, pad), constant_values=-1)}
        h1, h5 = hits(state, par.put_batch(batch), frozen)
        top1, top5 = top1 + int(h1), top5 + int(h5)
    n = len(test_src)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "num_test": n}


def fit(c, out: str, build) -> dict:
    """Trains (or resumes) the classifier `build(c, num_classes, lr_fn) -> Task` describes,
    in `out`; evaluates it on the test split and writes out/<task.name>.json."""
    # --- Config, input, model and optimizer -----------------------------------------
    validate(c, num_devices=jax.device_count(), process_count=jax.process_count())
    train_src, test_src, num_classes = labelled_data(c)
    schedule = Schedule.from_config(c, len(train_src))
    lr_fn = lr_schedule(c.optimizer, c.batch_size, schedule.total_steps, schedule.warmup_steps)
    task = build(c, num_classes, lr_fn)
    try:
        it = data.make_iterator(None, img_size=task.img_size, global_batch_size=c.batch_size, seed=c.seed,
                                process_index=jax.process_index(), process_count=jax.process_count(),
                                source=train_src, crop_scale=FINETUNE_CROP_SCALE)
    except ValueError as e:
        raise ConfigError(f"config.batch_size={c.batch_size}: {e}") from e
    out, is_main = os.path.abspath(out), jax.process_index() == 0
    os.makedirs(out, exist_ok=True)
    if is_main:
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write(c.to_json_best_effort(indent=2))

    # --- Sharding, restore or initialise ----------------------------------------------
    abstract = jax.eval_shape(task.init_state, task.encoder_params)
    par = parallel.make(c.parallelism, abstract)
    frozen = jax.device_put(task.encoder_params, par.replicated) if task.frozen_encoder else None
    step_fn = par.compile_step(lambda axis: task.train_step)
    ckpt = Checkpointer(os.path.join(out, "checkpoints"), keep=c.keep_checkpoints)
    restored = ckpt.restore_latest(jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, par.state_sharding))
    if restored is not None:
        start, state, data_state = restored
        try:
            it.set_state(data_state)
        except ValueError as e:  # another seed or batch size than the run being resumed
            raise ConfigError(f"config.batch_size={c.batch_size}, seed={c.seed}: cannot resume {out} ({e}); "
                              f"use the run's own values or a new output directory") from e
        log.info("resumed %s from step %d in %s", task.name, start, ckpt.directory)
    else:
        start = 0
        state = jax.jit(task.init_state, out_shardings=par.state_sharding)(task.encoder_params)
    batches = data.DevicePrefetcher(it, c.data.prefetch, put=par.put_batch)
    key = jax.random.fold_in(jax.random.key(c.seed), 1)

    # --- Loop ------------------------------------------------------------------------
    writer = metrics.MetricWriter(out, enabled=is_main)
    bar = metrics.ProgressBar(schedule.total_steps, start, enabled=is_main)
    throughput = metrics.Throughput(c.batch_size)
    pending, step = [], start
    log.info("%s: %d classes, %d train / %d test images, %d steps (%d/epoch), batch %d", task.name, num_classes,
             len(train_src), len(test_src), schedule.total_steps, schedule.steps_per_epoch, c.batch_size)
    try:
        throughput.start(step)
        while step < schedule.total_steps:
            state, m = step_fn(state, next(batches), frozen, key)
            step += 1
            pending.append(m)
            if step % c.log_every == 0 or step == schedule.total_steps:
                host = jax.device_get(pending)  # the only host sync
                row = {k: float(np.mean([p[k] for p in host])) for k in host[0]}
                row.update(images_per_sec=throughput.update(step), epoch=step / schedule.steps_per_epoch)
                writer.write(step, row)
                bar.update(step, images_per_sec=row["images_per_sec"], loss=row["loss"])
                pending = []
            if step % c.checkpoint_every == 0 and step < schedule.total_steps:
                ckpt.save(step, state, batches.get_state())
        if step > start or restored is None:
            ckpt.save(step, state, batches.get_state(), force=True)
        result = evaluate(task, state, frozen, test_src, c, par)
    finally:
        try:
            ckpt.wait()
        finally:
            ckpt.close()
            writer.close()
            bar.close()
    result.update(task=task.name, init=os.path.abspath(c.init), pool=c.pool, steps=step, num_train=len(train_src),
                  num_classes=num_classes)
    if is_main:
        with open(os.path.join(out, f"{task.name}.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


# --- The linear probe ----------------------------------------------------------------
def trunc_normal(std: float):
    """timm's `trunc_normal_(w, std)`: normal(std) cut at +-2 in absolute value (not at 2 std,
    as jax's truncated_normal by default, which would shrink the std by 12%)."""
    return nn.initializers.truncated_normal(std, lower=-2.0 / std, upper=2.0 / std)


class LinearProbeHead(nn.Module):
    """MAE's probe head: BatchNorm1d(affine=False, eps=1e-6) + Linear (trunc-normal std 0.01)."""

    num_classes: int

    @nn.compact
    def __call__(self, feats, train: bool = False):  # feats [B, D] -> logits [B, C]
        x = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False, epsilon=1e-6,
                         momentum=0.9, name="bn")(feats)  # torch momentum 0.1 = flax 0.9
        return nn.Dense(self.num_classes, kernel_init=trunc_normal(0.01), name="head")(x)


def build_linprobe(c, num_classes: int, lr_fn) -> Task:
    """The linear-probe task for `fit`: frozen encoder, trained head."""
    encoder, pretrained = load_encoder(c.init, img_size=c.model.img_size, dtype=c.model.dtype)
    head = LinearProbeHead(num_classes)
    tx = make_optimizer(c.optimizer, lr_fn)

    def features(encoder_params, images):  # [B, S, S, 3] -> [B, D], no gradient into the encoder
        x = encoder.apply({"params": encoder_params}, images, pool=c.pool)
        return jax.lax.stop_gradient(x).astype(jnp.float32)

    def init_state(encoder_params):
        v = head.init(jax.random.key(c.seed), jnp.zeros((1, encoder.width), jnp.float32))
        return ClassifierState.create(v["params"], tx, v["batch_stats"])

    def train_step(state, batch, encoder_params, base_key):
        del base_key  # nothing random on device: augmentation is the host pipeline's
        feats = features(encoder_params, batch["image"])  # [B, D]
        targets = jax.nn.one_hot(batch["label"], num_classes) * (1 - c.augment.label_smoothing) + \
            c.augment.label_smoothing / num_classes  # [B, C]

        def loss_fn(params):
            logits, new = head.apply({"params": params, "batch_stats": state.batch_stats}, feats, train=True,
                                     mutable=["batch_stats"])
            return optax.softmax_cross_entropy(logits, targets).mean(), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics_ = {"loss": loss, "lr": lr_fn(state.step), "grad_norm": optax.tree.norm(grads)}
        return state.apply_gradients(grads, tx, batch_stats=stats), metrics_

    def logits(state, images, encoder_params):
        return head.apply({"params": state.params, "batch_stats": state.batch_stats},
                          features(encoder_params, images))

    return Task("linprobe", encoder.img_size, pretrained, init_state, train_step, logits, frozen_encoder=True)


def linprobe(c, workdir: str | None, out: str | None = None) -> dict:
    """Linear probe of the encoder in `workdir` (None: `c.init`), run in `out` (default
    workdir/linprobe); the result also goes to workdir/linprobe.json."""
    c = c.copy_and_resolve_references()
    if workdir:
        c.init = workdir
    result = fit(c, out or os.path.join(c.init, "linprobe"), build_linprobe)
    if jax.process_index() == 0:
        with open(os.path.join(c.init, "linprobe.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result
