"""Masking strategies for masked image modeling: MAE random, GPA soft-to-hard, AttMask high.

Pure functions of arrays and an explicit PRNG key. No Flax. Output shapes depend only on
static arguments (batch, num_patches, mask_ratio); progress and the hard/soft/random counts
are traced, so everything works under `jax.jit`, `jax.vmap` and on batch-sharded arrays.

Example, inside your own train step (a teacher's q and k of one block, each [B, T, 1, hd],
e.g. from `mimjax.models.vit(...).apply(p, x, block=9, head=11, method="teacher_qk")`)::

    from mimjax import masking

    @jax.jit
    def train_step(state, images, q, k, step, key):
        g = masking.gpa_scores_from_qk(q, k, head=0)            # [B, N] in [0, 1]
        progress = step / total_steps                           # traced scalar
        m = masking.gpa_mask(key, g, progress, mask_ratio=0.75) # m.mask [B, N] bool
        visible = jnp.take_along_axis(patches, m.ids_keep[..., None], axis=1)
        ...                                                     # encode visible, decode, loss on m.mask

From q and k the scores cost O(T hd) per head (what `mimjax.train` does); `gpa_scores` /
`cls_attention_scores` give the same scores from the block's [B, H, T, T] logits
(q k^T * hd^-0.5).
"""
from mimjax.masking.gpa import gpa_mask, gpa_scores, gpa_scores_from_qk, mask_counts
from mimjax.masking.core import (Mask, high_mask, random_mask, cls_attention_scores, cls_attention_scores_from_qk,
                                 num_masked)

__all__ = ["Mask", "gpa_scores", "gpa_scores_from_qk", "mask_counts", "gpa_mask", "random_mask", "high_mask",
           "cls_attention_scores", "cls_attention_scores_from_qk", "num_masked"]
