"""Vision Transformer encoder (MAE/timm layout) and the `vit(name)` factory.

One forward serves three users:
- the plain encoder: NHWC images -> normed tokens [B, 1+N, D], cls first;
- the MAE student: only the visible patches `ids_keep` [B, K] -> [B, 1+K, D];
- the SimMIM student: every patch, the masked ones (`mask` [B, N]) replaced by a learned
  `mask_token` before the position embedding -> [B, 1+N, D];
- the GPA teacher: the pre-softmax attention logits of one block (and head), stopping
  right after that block's q and k.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mimjax.models.layers import LayerNorm, PatchEmbed, Transformer, posemb_sincos_2d

# name -> (patch, width, depth, heads); REFERENCE.md "ViT sizes".
VIT_VARIANTS = {
    "vit_tiny_patch16": (16, 192, 12, 3),
    "vit_small_patch16": (16, 384, 12, 6),
    "vit_base_patch16": (16, 768, 12, 12),
    "vit_large_patch16": (16, 1024, 24, 16),
    "vit_huge_patch14": (14, 1280, 32, 16),
}


class VisionTransformer(nn.Module):
    img_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32  # matmul operand dtype; parameters and all else float32 (layers.py "Mixed precision")
    remat: bool = False
    scan: bool = False  # one lax.scan over the blocks (see `Transformer`)
    drop_path: float = 0.0
    attention: str = "auto"  # attention kernel: auto | explicit | xla | cudnn (`layers.Attention`)

    def __post_init__(self):
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        super().__post_init__()

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @nn.compact
    def __call__(self, images, *, ids_keep=None, mask=None, mask_token=None, attn_block: int | None = None,
                 attn_head: int | None = None, stop_at_attn: bool = False, qk: bool = False, train: bool = False,
                 pool: str | None = None):
        """images: float [B, H, W, 3] (H = W = img_size).

        ids_keep: optional int32 [B, K], the patches to encode (MAE visible tokens).
        mask / mask_token: optional bool [B, N] (True = masked) and [1, 1, D]: the masked
        patches' embeddings are replaced by mask_token before the position embedding is
        added (SimMIM's `VisionTransformerForSimMIM`); the token is the caller's parameter.
        attn_block / attn_head / stop_at_attn / qk: see `Transformer`.
        pool: None -> tokens [B, 1+K, D] after the final LayerNorm; "token" -> the normed cls
        token [B, D] (timm global_pool='token'); "avg" -> LayerNorm of the mean patch token
        [B, D] (timm global_pool='avg', MAE fine-tuning's fc_norm; the same norm parameters).
        With attn_block, the pair (output, logits [B, H or 1, 1+K, 1+K]); with stop_at_attn,
        only the logits. With qk, (q, k) (each [B, 1+K, H or 1, hd]) in place of the logits:
        `stop_at_attn=True, qk=True` returns just (q, k).
        """
        if pool not in (None, "token", "avg"):
            raise ValueError(f"pool must be None, 'token' or 'avg', got {pool!r}")
        if (mask is None) != (mask_token is None):
            raise ValueError("mask and mask_token must be given together (SimMIM input masking)")
        if images.ndim != 4 or images.shape[1:3] != (self.img_size, self.img_size):
            raise ValueError(f"images must be [B, {self.img_size}, {self.img_size}, C], "
                             f"got shape {images.shape}")
        x = PatchEmbed(self.patch_size, self.width, self.dtype, name="patch_embed")(images)  # [B, N, D]
        b = x.shape[0]
        if mask is not None:  # SimMIM: x * (1 - w) + mask_token * w, w = 1 on masked patches
            w = mask.astype(x.dtype)[:, :, None]  # [B, N, 1]
            x = x * (1 - w) + mask_token.astype(x.dtype) * w
        pos = jnp.asarray(posemb_sincos_2d(self.grid_size, self.grid_size, self.width))  # [1+N, D]
        x = x + pos[1:].astype(x.dtype)
        if ids_keep is not None:
            x = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)  # [B, K, D]
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.width))
        cls = (cls + pos[:1]).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], axis=1)  # [B, 1+K, D]
        x, logits = Transformer(self.depth, self.num_heads, self.mlp_ratio, self.dtype,
                                self.remat, self.drop_path, self.scan, self.attention, name="blocks")(
            x, attn_block=attn_block, attn_head=attn_head, stop_at_attn=stop_at_attn, qk=qk,
            deterministic=not train)
        if stop_at_attn:
            return logits
        norm = LayerNorm(name="norm")
        x = norm(x[:, 1:].mean(axis=1)) if pool == "avg" else norm(x)
        if pool == "token":
            x = x[:, 0]
        return x if attn_block is None else (x, logits)


def _check_overrides(cls, name: str, overrides: dict):
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for {name}; expected some of {sorted(fields)}")


def vit_kwargs(name: str) -> dict:
    """Architecture arguments of a named ViT ("vit_base_patch16")."""
    if name not in VIT_VARIANTS:
        raise ValueError(f"unknown ViT name {name!r}; expected one of {sorted(VIT_VARIANTS)}")
    patch, width, depth, heads = VIT_VARIANTS[name]
    return dict(patch_size=patch, width=width, depth=depth, num_heads=heads)


def vit(name: str, **overrides) -> VisionTransformer:
    """`vit("vit_base_patch16")`, `vit("vit_small_patch16", img_size=96, dtype=jnp.bfloat16)`."""
    _check_overrides(VisionTransformer, name, overrides)
    return VisionTransformer(**{**vit_kwargs(name), **overrides})
