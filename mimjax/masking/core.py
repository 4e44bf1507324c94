"""Mask representation, argument checks, MAE random masking and AttMask-style high masking."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Mask(NamedTuple):
    """A per-image patch mask (a pytree).

    mask: bool [B, N], True = masked (removed from the encoder's input).
    ids_keep: int32 [B, K], K = N - M, the visible patches in encoder order.
    ids_restore: int32 [B, N], the permutation that puts [visible..., masked...] back in
      patch order (MAE's `ids_restore`).
    """

    mask: jax.Array
    ids_keep: jax.Array
    ids_restore: jax.Array


def check_ratio(name: str, value, low_open: bool = True, high_open: bool = True):
    if isinstance(value, jax.core.Tracer) or not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a Python number (it fixes the output shapes), got {value!r}")
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    if not (lo_ok and hi_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """M = N - int(N * (1 - ratio)) masked patches, as MAE's `len_keep` (static)."""
    check_ratio("mask_ratio", mask_ratio)
    if not isinstance(num_patches, int) or num_patches < 2:
        raise ValueError(f"num_patches must be an int >= 2, got {num_patches!r}")
    len_keep = int(num_patches * (1 - mask_ratio))
    if len_keep < 1 or len_keep >= num_patches:
        raise ValueError(f"mask_ratio={mask_ratio} with num_patches={num_patches} keeps "
                         f"{len_keep} patches; expected between 1 and {num_patches - 1}")
    return num_patches - len_keep


def mask_from_noise(noise, num_mask: int) -> Mask:
    """Mask the `num_mask` patches with the largest noise [B, N] (ties: lower index kept).

    Same convention as MAE: ascending argsort, keep the first N - M.
    """
    n = noise.shape[-1]
    ids_shuffle = jnp.argsort(noise, axis=-1, stable=True).astype(jnp.int32)  # [B, N]
    ids_restore = jnp.argsort(ids_shuffle, axis=-1).astype(jnp.int32)  # [B, N]
    len_keep = n - num_mask
    return Mask(mask=ids_restore >= len_keep, ids_keep=ids_shuffle[:, :len_keep],
                ids_restore=ids_restore)


def random_mask(key, batch_size: int, num_patches: int, mask_ratio: float = 0.75) -> Mask:
    """MAE random masking: each image its own uniformly random set of M masked patches."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    m = num_masked(num_patches, mask_ratio)
    noise = jax.random.uniform(key, (batch_size, num_patches))
    return mask_from_noise(noise, m)


def check_scores(name: str, scores):
    if getattr(scores, "ndim", None) != 2:
        raise ValueError(f"{name} must be [B, N], got shape {getattr(scores, 'shape', type(scores).__name__)}")


def finite_or(scores, lowest: float):
    """scores float32 with every NaN / +-inf replaced by `lowest`: a non-finite score counts as
    the lowest (never masked first, never drawn), inside jit as outside (no error is possible
    on traced values)."""
    s = scores.astype(jnp.float32)
    return jnp.where(jnp.isfinite(s), s, lowest)


def high_mask(scores, mask_ratio: float = 0.75) -> Mask:
    """AttMask "high": mask the M patches with the highest score (deterministic; ties go to
    the lower index). scores [B, N], e.g. from `cls_attention_scores`; a non-finite score
    (NaN, +-inf) counts as the lowest."""
    check_scores("scores", scores)
    m = num_masked(scores.shape[-1], mask_ratio)
    return mask_from_noise(finite_or(scores, -jnp.inf), m)  # NaN / inf: lowest, masked last


def cls_attention_scores(attn, *, num_prefix_tokens: int = 1):
    """AttMask's saliency: post-softmax attention of the cls query to each patch key,
    mean over heads. attn: pre-softmax logits [B, H, T, T] -> float32 [B, N]."""
    if attn.ndim != 4:
        raise ValueError(f"attn must be [B, H, T, T] pre-softmax logits, got shape {attn.shape}")
    probs = jax.nn.softmax(attn.astype(jnp.float32), axis=-1)  # [B, H, T, T]
    return probs[:, :, 0, num_prefix_tokens:].mean(axis=1)


def check_qk(q, k, num_prefix_tokens: int):
    """q, k [B, T, H, hd] of one block (same shape) -> both as float32; checks the prefix."""
    if q.ndim != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [B, T, H, hd] of the same shape, got {q.shape} and {k.shape}")
    tokens, heads = q.shape[1], q.shape[2]
    patches = tokens - num_prefix_tokens
    # [B, H, T, hd] passed by mistake: more "heads" than "tokens", and the "patches" no square grid
    if heads > tokens and round(max(patches, 0) ** 0.5) ** 2 != patches:
        raise ValueError(f"q and k must be [B, T, H, hd] (tokens on axis 1), got shape {q.shape}: {heads} heads "
                         f"> {tokens} tokens and {patches} patches make no square grid, so axes 1 and 2 look "
                         f"swapped ([B, H, T, hd]? pass q.transpose(0, 2, 1, 3))")
    if not 0 <= num_prefix_tokens < tokens - 1:
        raise ValueError(f"num_prefix_tokens must be in [0, {tokens - 1}), got {num_prefix_tokens}")
    return q.astype(jnp.float32), k.astype(jnp.float32)


def cls_attention_scores_from_qk(q, k, *, num_prefix_tokens: int = 1):
    """`cls_attention_scores` from the block's q and k [B, T, H, hd] (logits = q k^T hd^-0.5)
    without the [B, H, T, T] logits: only the cls query's row, O(T H hd), in float32.
    Returns float32 [B, N]."""
    q, k = check_qk(q, k, num_prefix_tokens)
    scale = q.shape[-1] ** -0.5
    row = jnp.einsum("bhd,bthd->bht", q[:, 0], k, precision=jax.lax.Precision.HIGHEST) * scale  # [B, H, T]
    return jax.nn.softmax(row, axis=-1)[:, :, num_prefix_tokens:].mean(axis=1)
