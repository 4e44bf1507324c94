"""The optimizers of pre-training and the classifiers (the lr schedule is `schedule.py`):
MAE's AdamW (0.9, 0.95) with weight decay 0.05 except on biases, norms and cls/mask
tokens; LARS / SGD for the linear probe; per-parameter lr scales (layer-wise decay);
optional global-norm clipping."""
from __future__ import annotations

import jax
import optax


def decay_mask(params):
    """True where weight decay applies: Dense/Conv kernels only, not biases (also the
    [H, hd] q/k/v biases), LayerNorm scales, cls_token / mask_token (MAE's
    `param_groups_weight_decay`: 1-D params and tokens are exempt)."""
    def wants_decay(path, _):
        return getattr(path[-1], "key", None) == "kernel"
    return jax.tree_util.tree_map_with_path(wants_decay, params)


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiplies every update by its leaf of `scales` (a pytree of floats like the params)."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(o, lr_fn, scales=None) -> optax.GradientTransformation:
    """The optimizer of an `optimizer` config section, for pre-training and the classifiers.

    `o.name` (the classifiers' schema; pre-training is always adamw): adamw (b1, b2), lars
    (MAE util/lars.py: weight decay and trust ratio on kernels only, momentum) or sgd
    (momentum). Weight decay where `decay_mask` says; `scales`: per-parameter lr
    multipliers (layer-wise lr decay); `o.grad_clip` > 0: global-norm clipping first."""
    name = o.get("name", "adamw")
    if name == "adamw":
        tx = optax.adamw(lr_fn, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
    elif name == "lars":
        tx = optax.lars(lr_fn, weight_decay=o.weight_decay, weight_decay_mask=decay_mask,
                        trust_ratio_mask=decay_mask, momentum=o.momentum)
    else:
        tx = optax.chain(optax.add_decayed_weights(o.weight_decay, decay_mask),
                         optax.sgd(lr_fn, momentum=o.momentum or None))
    if scales is not None:
        tx = optax.chain(tx, scale_by_tree(scales))
    if o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx
