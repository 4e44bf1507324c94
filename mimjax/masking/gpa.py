"""GPA: scores from a teacher's attention and soft-to-hard masks (docs/method.md §2 and §3)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mimjax.masking.core import Mask, check_qk, check_ratio, check_scores, finite_or, mask_from_noise, num_masked

# float32 products like 147 * 0.25 can land a hair under an integer that float64 (the
# authors' Python) hits exactly; int() must still give that integer.
_FLOOR_SLACK = 1e-4


def gpa_scores(attn, *, head: int | None = 11, num_prefix_tokens: int = 1):
    """GPA score g [B, N] float32 in [0, 1] from one block's pre-softmax logits.

    attn: [B, H, T, T] with T = num_prefix_tokens + N (queries on axis 2, keys on axis 3).
    head: which head (negative counts from the end); None averages the logits over heads.
    r_j = sum over all queries i (prefix included) of attn[b, h, i, j]; the prefix keys
    are dropped; per image min-max to [0, 1]. A constant row gives 0 (the denominator
    carries float32's smallest normal number), never NaN. A non-finite r_j (NaN, inf: a
    teacher with non-finite weights) scores 0, the lowest, so a row with none finite is all
    0 and `gpa_mask` then draws no patch soft and puts its hard picks on the first patches by
    index (why `mimjax import` and a checkpoint teacher refuse non-finite weights).
    """
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn must be [B, H, T, T] pre-softmax logits, got shape {attn.shape}")
    num_heads, tokens = attn.shape[1], attn.shape[-1]
    if not 0 <= num_prefix_tokens < tokens - 1:
        raise ValueError(f"num_prefix_tokens must be in [0, {tokens - 1}), got {num_prefix_tokens}")
    if head is None:
        a = attn.astype(jnp.float32).mean(axis=1)  # [B, T, T]
    else:
        if not -num_heads <= head < num_heads:
            raise ValueError(f"head must be in [{-num_heads}, {num_heads}) for attn with "
                             f"{num_heads} heads, got {head}")
        a = attn[:, head].astype(jnp.float32)  # [B, T, T]
    r = a.sum(axis=1)[:, num_prefix_tokens:]  # column sums over queries -> [B, N]
    return _min_max(r)


def _min_max(r):
    """Per image min-max of r [B, N] float32 to [0, 1]; a constant row gives 0, not NaN. A
    non-finite entry (NaN, +-inf: an overflowing logit) scores 0, the lowest, and the others
    are scaled among themselves (a row with none finite is all 0)."""
    finite = jnp.isfinite(r)
    lo = jnp.min(jnp.where(finite, r, jnp.inf), -1, keepdims=True)
    hi = jnp.max(jnp.where(finite, r, -jnp.inf), -1, keepdims=True)
    g = (r - lo) / (hi - lo + jnp.finfo(jnp.float32).tiny)
    return jnp.where(finite, g, 0.0)


def gpa_scores_from_qk(q, k, *, head: int | None = 11, num_prefix_tokens: int = 1):
    """`gpa_scores` of the block's logits A = q k^T * hd^-0.5, from q and k without forming A.

    q, k: [B, T, H, hd] (any float dtype; computed in float32), T = num_prefix_tokens + N.
    head: which head (negative counts from the end); None averages over heads.
    Column sums of A are r_j = hd^-0.5 * k_j . (sum_i q_i) (per head; mean over heads for
    None): O(T hd) per head instead of O(T^2 hd), and nothing [T, T] is formed. Then the
    same prefix drop and per-image min-max as `gpa_scores`, non-finite values scoring 0.
    """
    q, k = check_qk(q, k, num_prefix_tokens)
    num_heads = q.shape[2]
    if head is not None:
        if not -num_heads <= head < num_heads:
            raise ValueError(f"head must be in [{-num_heads}, {num_heads}) for q, k with "
                             f"{num_heads} heads, got {head}")
        h = head % num_heads
        q, k = q[:, :, h:h + 1], k[:, :, h:h + 1]  # [B, T, 1, hd]
    scale = q.shape[-1] ** -0.5
    q_sum = q.sum(axis=1)  # sum over all queries (prefix included) -> [B, h, hd]
    r = jnp.einsum("bhd,bthd->bt", q_sum, k, precision=jax.lax.Precision.HIGHEST)  # summed over heads
    r = r * (scale / q.shape[2])  # mean over the heads kept
    return _min_max(r[:, num_prefix_tokens:])


def _check_share(name, pair):
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ValueError(f"{name} must be a (start, end) pair of fractions, got {pair!r}")
    for v in pair:
        check_ratio(name, v, low_open=False, high_open=False)


def mask_counts(progress, num_patches: int, mask_ratio: float = 0.75,
                hard=(0.0, 0.5), soft=(0.3, 0.0)):
    """(n_hard, n_soft, n_random), traced int32 scalars, summing to M (docs/method.md §3).

    progress t in [0, 1] (clipped; traced is fine; a Python NaN / inf is a ValueError, a
    traced NaN counts as 0); a(t) = a0 + t (aT - a0),
    s(t) = s0 + t (sT - s0), n_h = int(M a), n_s = int(M s), n_s = M - n_h if they overflow.
    """
    m = num_masked(num_patches, mask_ratio)
    _check_share("hard", hard)
    _check_share("soft", soft)
    if isinstance(progress, (int, float)) and not math.isfinite(progress):
        raise ValueError(f"progress must be a finite number in [0, 1], got {progress!r}")
    t = jnp.asarray(progress, jnp.float32)
    if t.ndim:
        raise ValueError(f"progress must be a scalar, got shape {t.shape}")
    t = jnp.clip(jnp.where(jnp.isnan(t), 0.0, t), 0.0, 1.0)  # traced NaN: the start (0); no error under jit
    a = hard[0] + t * (hard[1] - hard[0])
    s = soft[0] + t * (soft[1] - soft[0])
    n_hard = jnp.floor(m * a + _FLOOR_SLACK).astype(jnp.int32)
    n_soft = jnp.floor(m * s + _FLOOR_SLACK).astype(jnp.int32)
    n_soft = jnp.minimum(n_soft, m - n_hard)
    return n_hard, n_soft, m - n_hard - n_soft


def _ranks_descending(values):
    """Rank of each entry in [B, N] by descending value (0 = largest; ties: lower index)."""
    order = jnp.argsort(-values, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1)


def gpa_mask(key, scores, progress, *, mask_ratio: float = 0.75,
             hard=(0.0, 0.5), soft=(0.3, 0.0)) -> Mask:
    """Soft-to-hard GPA masking ("SP+RAND", docs/method.md §3).

    key: PRNG key; scores: GPA scores g [B, N] in [0, 1]; progress: scalar in [0, 1].
    Per image: noise ~ U[0, 1); n_soft patches drawn without replacement with probability
    proportional to g get noise 2 (Gumbel-top-k on log g; g = 0 is never drawn); the
    n_hard highest-g patches get noise 3 (overriding soft picks); the M largest noises are
    masked. Returns a `Mask` with exactly M = N - int(N (1 - mask_ratio)) masked per image.
    A score that is NaN, +-inf or negative counts as 0, the lowest: never drawn soft, last for
    hard (inside jit too; no error is raised on traced values).
    """
    check_scores("scores", scores)
    b, n = scores.shape
    n_hard, n_soft, _ = mask_counts(progress, n, mask_ratio, hard, soft)
    g = jnp.maximum(finite_or(scores, 0.0), 0.0)  # NaN, inf, negative: 0, the lowest (never drawn)
    k_noise, k_gumbel = jax.random.split(key)
    noise = jax.random.uniform(k_noise, (b, n))
    # Gumbel-top-k: the n_soft largest log(g) + Gumbel are a draw without replacement ~ g.
    perturbed = jnp.log(g) + jax.random.gumbel(k_gumbel, (b, n))  # log 0 = -inf: never drawn
    soft_pick = (_ranks_descending(perturbed) < n_soft) & (g > 0)
    hard_pick = _ranks_descending(g) < n_hard
    noise = jnp.where(soft_pick, 2.0, noise)
    noise = jnp.where(hard_pick, 3.0, noise)
    return mask_from_noise(noise, num_masked(n, mask_ratio))
