"""The classifiers' shared pieces: a pre-trained encoder, labelled data,
test-set evaluation and `fit`, the run both classifiers go through (linear probe:
`mimjax.eval.linprobe`, fine-tuning: `mimjax.eval.finetune`).

`fit` reads top to bottom: config -> input -> model and optimizer (a `Task` says what
differs) -> the loop on a `mimjax.train.loop.Run` (the lock, restore or initialise, log
rows, checkpoints, SIGTERM) -> evaluation on the test split -> OUT/<task>.json. The test
split is also evaluated every `eval_every_epochs` epochs, as MAE's and the GPA authors'
main_finetune.py / main_linprobe.py do every epoch: each evaluation is a `test_top1`
(`test_top5`) row of metrics.jsonl, and the result holds the final accuracy (`top1`) and
the best one with its epoch (`best_top1`, `best_epoch`; what those scripts print as
"Max accuracy"). The config schema is `mimjax.eval.config`'s.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mimjax import data, parallel, paths
from mimjax.eval import knn  # `accuracy`: the same top-1 / top-5 rows as `eval knn`
from mimjax.eval.config import ConfigError, validate
from mimjax.train import loop, metrics
from mimjax.train.schedule import Schedule, describe_learning_rate, lr_schedule

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


def trunc_normal(std: float):
    """timm's `trunc_normal_(w, std)`: normal(std) cut at +-2 in absolute value (not at 2 std,
    as jax's truncated_normal by default, which would shrink the std by 12%)."""
    return nn.initializers.truncated_normal(std, lower=-2.0 / std, upper=2.0 / std)


def make_evaluator(task: Task, test_src, c, par, num_classes: int) -> Callable[[Any, Any], dict]:
    """(state, frozen) -> top-1 (and with more than 5 classes top-5) accuracy, percent, on
    `test_src`: center crops, one pass, every batch padded to eval_batch_size (label -1), so
    one compilation (made here, once) and equal batch counts on every process."""
    pid, pcount = jax.process_index(), jax.process_count()
    local, s = c.eval_batch_size // pcount, task.img_size

    @jax.jit
    def hits(state, batch, frozen):  # (top-1 hits, top-5 hits), replicated scalars
        logits = task.logits(state, batch["image"], frozen)  # [B, C]
        top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]  # [B, k]
        hit = top == batch["label"][:, None]  # padding (-1) never hits
        return hit[:, 0].sum(), hit.any(axis=-1).sum()

    def evaluate(state, frozen) -> dict:
        it = data.make_iterator(None, img_size=s, global_batch_size=c.eval_batch_size, seed=0, train=False,
                                source=test_src, process_index=pid, process_count=pcount)
        top1 = top5 = 0
        for _ in range(-(-len(test_src) // c.eval_batch_size)):
            batch = next(it, {"image": np.zeros((0, s, s, 3), np.float32), "label": np.zeros((0,), np.int32)})
            pad = local - len(batch["label"])
            batch = {"image": np.pad(batch["image"], ((0, pad), (0, 0), (0, 0), (0, 0))),
                     "label": np.pad(batch["label"], (0, pad), constant_values=-1)}
            h1, h5 = hits(state, par.put_batch(batch), frozen)
            top1, top5 = top1 + int(h1), top5 + int(h5)
        n = len(test_src)
        return {**knn.accuracy(top1, top5, n, num_classes), "num_test": n}

    return evaluate


def test_row(test: dict, step: int, schedule) -> dict:
    """An evaluation as a metrics.jsonl row: test_top1 (test_top5) and the epoch."""
    return {**{f"test_{k}": v for k, v in test.items() if k in ("top1", "top5")},
            "epoch": step / schedule.steps_per_epoch}


def best_of(rows) -> dict:
    """The best evaluation among metrics.jsonl `rows` (test_row's; the last row of a step
    counts): best_top1 with its best_epoch and best_step, and best_top5 (the highest top-5,
    which may be of another epoch); {} without any."""
    tests = {r["step"]: r for r in rows if r.get("test_top1") is not None}
    if not tests:
        return {}
    best = max(tests.values(), key=lambda r: (r["test_top1"], -r["step"]))  # the earliest of equal ones
    out = {"best_top1": best["test_top1"], "best_epoch": best["epoch"], "best_step": best["step"],
           "evaluations": len(tests)}
    top5 = [r["test_top5"] for r in tests.values() if r.get("test_top5") is not None]
    if top5:
        out["best_top5"] = max(top5)
    return out


def fit(c, out: str, build) -> dict:
    """Trains (or resumes) the classifier `build(c, num_classes, lr_fn) -> Task` describes,
    in `out`; evaluates it on the test split and writes out/<task.name>.json. After a
    SIGTERM the run stops at a checkpoint without evaluating and returns
    {"task", "preempted": True, "steps"}; rerunning resumes it."""
    # --- Config, input, model and optimizer -----------------------------------------
    validate(c, num_devices=jax.device_count(), process_count=jax.process_count())
    from mimjax import workdir as workdir_lib  # --out: its own run, never the encoder's run or its checkpoints/

    workdir_lib.check_output(out, "--out", own_run=True, not_in=c.init)
    train_src, test_src, num_classes = labelled_data(c)
    schedule = Schedule.from_config(c, len(train_src))
    lr_fn = lr_schedule(c.optimizer, c.batch_size, schedule.total_steps, schedule.warmup_steps)
    task = build(c, num_classes, lr_fn)
    try:
        it = data.make_iterator(None, img_size=task.img_size, global_batch_size=c.batch_size, seed=c.seed,
                                process_index=jax.process_index(), process_count=jax.process_count(),
                                source=train_src, crop_scale=FINETUNE_CROP_SCALE, crop_draw=c.data.crop,
                                randaugment=c.data.randaugment)
    except ValueError as e:
        raise ConfigError(f"config.batch_size={c.batch_size}: {e}") from e
    out = paths.absolute(out)  # (gs://... unchanged)

    # --- Sharding, then the loop (on a mimjax/train/loop.py Run) -------------------------
    abstract = jax.eval_shape(task.init_state, task.encoder_params)
    par = parallel.make(c.parallelism, abstract)
    frozen = jax.device_put(task.encoder_params, par.replicated) if task.frozen_encoder else None
    key = jax.random.fold_in(jax.random.key(c.seed), 1)
    log.info("%s: %d classes, %d train / %d test images, %d steps (%d/epoch), batch %d; %s", task.name, num_classes,
             len(train_src), len(test_src), schedule.total_steps, schedule.steps_per_epoch, c.batch_size,
             describe_learning_rate(c.optimizer, c.batch_size))

    init = jax.jit(task.init_state, out_shardings=par.state_sharding)
    evaluate = make_evaluator(task, test_src, c, par, num_classes)
    train_step = par.compile_step(lambda axis: task.train_step)
    with loop.Run(out, c, name=task.name, flag="--out", schedule=schedule, par=par, abstract_state=abstract,
                  init_state=lambda: init(task.encoder_params), iterator=it, outputs=(f"{task.name}.json",)) as run:
        state = run.start_state
        step_args = run.replicate((frozen, key))  # explicit, once: the guard allows no transfer
        every = c.eval_every_epochs * schedule.steps_per_epoch  # 0: after the last step only
        for step, batch in run.batches():  # until total_steps, or a preemption notice
            with run.step(step):  # under the transfer guard; then the preemption sync point
                state, m = train_step(state, batch, *step_args)
            run.log(step, m)
            if every and step % every == 0 and step < schedule.total_steps:  # reads the state only
                with run.phase("evaluation"):
                    run.writer.write_scalars(step, test_row(evaluate(state, frozen), step, schedule))
            run.profile(step, (state, m))
            if run.should_save(step):  # (preempted or the last step: saved below)
                run.save(step, state)
        if run.final_save_due:
            run.save(run.steps_done, state, final=True)
        # the test split
        with run.phase("evaluation"):
            result = None if run.preempted else evaluate(state, frozen)
        if result is not None:
            run.writer.write_scalars(run.steps_done, test_row(result, run.steps_done, schedule))
    if run.preempted:
        return {"task": task.name, "preempted": True, "steps": run.steps_done}
    result.update(task=task.name, init=paths.absolute(c.init), pool=c.pool, steps=run.steps_done,
                  num_train=len(train_src), num_classes=num_classes)
    if jax.process_index() == 0:  # the best of this run's evaluations, resumed segments included
        result.update(best_of(metrics.read_metrics(paths.join(out, "metrics.jsonl"))))
        paths.write_text(paths.join(out, f"{task.name}.json"), json.dumps(result, indent=2))
    return result
