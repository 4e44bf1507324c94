"""MAE linear probing (`main_linprobe.py`): the probe head and its task; the run itself
(data, optimizers, loop, evaluation) is `mimjax.eval.classify.fit`, shared with fine-tuning.

    mimjax eval linprobe --config configs/linprobe.py --workdir W

A frozen encoder (gradients stopped, run every step on RandomResizedCrop + flip) gives the
normed cls token (pool="token", MAE's default) or the normed mean patch token; the head is
BatchNorm without affine (eps 1e-6) + a linear layer (trunc-normal std 0.01, zero bias).
LARS (MAE util/lars.py), blr 0.1, lr = blr * batch / 256, no weight decay, warm-up then
cosine; `optimizer.name` may pick sgd or adamw. Writes OUT (default W/linprobe/):
config.json, metrics.jsonl, checkpoints/ (a restart resumes), linprobe.json; and
W/linprobe.json (top-1 / top-5 on the test split), as `eval knn` writes W/knn.json.
"""
from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mimjax.eval.classify import ClassifierState, Task, fit, load_encoder, trunc_normal
from mimjax.train.optim import make_optimizer


# --- The linear probe ----------------------------------------------------------------
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
        x = encoder.apply({"params": encoder_params}, images, pool=c.pool, method="features")
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
    from mimjax.workdir import require_path

    require_path(workdir, "--workdir")
    require_path(out, "--out")  # None: the default below; '' is an error
    c = c.copy_and_resolve_references()
    if workdir:
        c.init = workdir
    from mimjax import paths

    paths.refuse_link(paths.join(c.init, "linprobe.json"))  # before any work: never written through a link
    result = fit(c, out or paths.join(c.init, "linprobe"), build_linprobe)
    if jax.process_index() == 0:
        paths.write_text(paths.join(c.init, "linprobe.json"), json.dumps(result, indent=2))
    return result
