"""The optimizers of pre-training and the classifiers (the lr schedule is `schedule.py`):
MAE's AdamW (0.9, 0.95) with weight decay 0.05 on everything but biases and 1-D
parameters; LARS / SGD for the linear probe; per-parameter lr scales (layer-wise decay);
optional global-norm clipping."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def decay_mask(params):
    """The classifiers' weight decay (MAE fine-tuning `param_groups_lrd` and linear probe
    `param_groups_weight_decay`): kernels only; no decay on biases (also the [H, hd] q/k/v
    biases), LayerNorm scales and the cls token (their `no_weight_decay` list)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _name(path) == "kernel", params)


def pretrain_decay_mask(params, exempt: tuple[str, ...] = ()):
    """Pre-training's weight decay, the rule of the reference code: no decay for 1-D
    parameters and biases (a [H, hd] q/k/v bias is part of torch's 1-D qkv.bias), decay for
    everything else, cls_token and mask_token ([1, 1, D]) included, unless named in `exempt`.
    MAE and the GPA authors (timm `add_weight_decay`, no skip list): exempt nothing.
    SimMIM (its ViT's `no_weight_decay`): exempt the cls token; its mask token decays."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _name(path) != "bias" and _name(path) not in exempt and x.ndim > 1, params)


PRETRAIN_EXEMPT = {"mae": (), "simmim": ("cls_token",)}  # model.arch -> leaves exempt from decay


def _name(path) -> str | None:
    return getattr(path[-1], "key", None)


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiplies every update by its leaf of `scales` (a pytree of floats like the params)."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def mae_lars(lr_fn, *, weight_decay: float, mask, momentum: float = 0.9, trust_coefficient: float = 0.001
             ) -> optax.GradientTransformation:
    """LARS as MAE's util/lars.py applies it: on the leaves `mask` selects (kernels), the
    gradient plus weight decay is scaled by the trust ratio trust_coefficient * |p| / |g + wd p|
    (1 where either norm is 0); then the momentum buffer mu = momentum * mu + that, on every
    leaf; then p -= lr * mu. optax.lars scales by the lr *before* its momentum, so a changing
    lr (warm-up, cosine) weighs old gradients by their own step's lr instead of today's."""
    return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                       optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient), mask),
                       optax.trace(decay=momentum),
                       optax.scale_by_learning_rate(lr_fn))


def make_optimizer(o, lr_fn, scales=None, mask=decay_mask, own_adam_for_head: bool = False
                   ) -> optax.GradientTransformation:
    """The optimizer of an `optimizer` config section, for pre-training and the classifiers.

    `o.name` (the classifiers' schema; pre-training is always adamw): adamw (b1, b2), lars
    (`mae_lars`: weight decay and trust ratio on kernels only, momentum, then the lr) or sgd
    (momentum). Weight decay where `mask` says (the classifiers' `decay_mask` by default;
    pre-training passes `pretrain_decay_mask`); `own_adam_for_head` (adamw): the GPA head
    gets Adam moments and a step count of its own (`keep_head_unchanged`); `scales`: per-parameter lr
    multipliers (layer-wise lr decay); `o.grad_clip` > 0: global-norm clipping first."""
    name = o.get("name", "adamw")
    if name == "adamw" and own_adam_for_head:  # optax.adamw, with the Adam part split in two
        adam = optax.multi_transform({HEAD: optax.scale_by_adam(o.b1, o.b2), "rest": optax.scale_by_adam(o.b1, o.b2)},
                                     head_labels)
        tx = optax.chain(adam, optax.add_decayed_weights(o.weight_decay, mask), optax.scale_by_learning_rate(lr_fn))
    elif name == "adamw":
        tx = optax.adamw(lr_fn, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask)
    elif name == "lars":
        tx = mae_lars(lr_fn, weight_decay=o.weight_decay, mask=mask, momentum=o.momentum)
    else:
        tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask),
                         optax.sgd(lr_fn, momentum=o.momentum or None))
    if scales is not None:
        tx = optax.chain(tx, scale_by_tree(scales))
    if o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx


# --- The GPA head's late start (model.gpa_head_late_start, docs/method.md §4) -----------------
# While progress <= 0.75 the released code does not run the head's blocks, so in PyTorch
# they get no gradient at all and AdamW skips them: no weight decay, no moment update, no
# step count. optax would still decay them (by epoch 151 of the 200-epoch recipe a head
# kernel would be ~2.6% of its initial value). So while the head is off its parameters and
# its own Adam state are kept exactly as they were; when it starts, its Adam bias
# correction starts at step 1, as PyTorch's per-parameter step does, at the global lr.
HEAD = "gpa_head"


def head_labels(params):
    """HEAD for the GPA head's parameters (top-level gpa_blocks, gpa_norm, gpa_pred), else "rest"."""
    return {k: jax.tree.map(lambda _: HEAD if k.startswith("gpa_") else "rest", v) for k, v in params.items()}


def keep_head_unchanged(head_on, new, old):
    """(params, opt_state) `new`, except that while `head_on` (a traced bool) is False the
    GPA head's parameters and its Adam state (of `make_optimizer(..., own_adam_for_head=True)`)
    are those of `old`."""
    def head_leaf(path) -> bool:
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        in_params = keys[0] in ("params",) and str(keys[1]).startswith("gpa_")
        in_state = keys[0] == "opt_state" and any(a == "inner_states" and b == HEAD for a, b in zip(keys, keys[1:]))
        return in_params or in_state

    def pick(path, n, o):
        return jnp.where(head_on, n, o) if head_leaf(path) else n

    params, opt_state = new
    out = jax.tree_util.tree_map_with_path(pick, {"params": params, "opt_state": opt_state},
                                           {"params": old[0], "opt_state": old[1]})
    return out["params"], out["opt_state"]
