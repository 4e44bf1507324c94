"""MAE optimisation (the lr schedule is `schedule.py`): AdamW (0.9, 0.95), weight decay 0.05 except on biases, norms, cls/mask tokens (and any
other 1-D or position parameter), optional global-norm clipping."""
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


def make_optimizer(opt_cfg, schedule):
    tx = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=opt_cfg.weight_decay,
                     mask=decay_mask)
    if opt_cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), tx)
    return tx
