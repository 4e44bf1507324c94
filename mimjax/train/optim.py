"""MAE optimisation: lr = blr * batch / 256, linear warm-up then half-cosine per step,
AdamW (0.9, 0.95), weight decay 0.05 except on biases, norms, cls/mask tokens (and any
other 1-D or position parameter), optional global-norm clipping."""
from __future__ import annotations

import math

import jax
import optax


def learning_rate(opt_cfg, batch_size: int) -> float:
    return opt_cfg.lr if opt_cfg.lr > 0 else opt_cfg.blr * batch_size / 256


def lr_schedule(opt_cfg, batch_size: int, total_steps: int, warmup_steps: int):
    """MAE's `adjust_learning_rate`, evaluated per step: step -> lr (jit-friendly)."""
    peak, floor = learning_rate(opt_cfg, batch_size), opt_cfg.min_lr
    warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    decay_steps = max(total_steps - warmup_steps, 1)
    cosine = lambda s: floor + (peak - floor) * 0.5 * (1 + jax.numpy.cos(math.pi * s / decay_steps))
    return optax.join_schedules([warmup, cosine], [warmup_steps])


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
