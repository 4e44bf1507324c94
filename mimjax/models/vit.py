"""Vision Transformer encoder (MAE/timm layout) and the `vit(name)` factory.

Entry points, each one output (call them as `model.apply(variables, images, ...,
method=VisionTransformer.encode)`, or as methods of a bound submodule):
- `encode`: NHWC images -> normed tokens [B, 1+K, D], cls first; every patch (K = N), only
  the visible ones `ids_keep` (the MAE student), or every patch with the masked ones
  replaced by a learned `mask_token` (the SimMIM student). `__call__` (what `init` runs)
  is `encode` of every patch.
- `features`: one pooled feature per image [B, D] (k-NN, linear probe, fine-tuning).
- `teacher_qk`: q and k of one block (and head) [B, 1+N, 1 or H, hd], stopping right
  there: what the GPA teacher's scores are computed from.

The position embedding is MAE's fixed 2-D sin-cos table in pre-training; with
`learned_pos_embed` it is a parameter `pos_embed` [1, 1+N, D] initialised from that table, as
MAE's and the GPA authors' fine-tuning train it (and a fine-tuned timm ViT holds it).
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
POOLS = ("token", "avg")


class VisionTransformer(nn.Module):
    img_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32  # matmul operand dtype; parameters and all else float32 (precision.py)
    remat: bool = False
    scan: bool = False  # one lax.scan over the blocks (see `Transformer`)
    drop_path: float = 0.0
    attention: str = "auto"  # attention kernel: auto | explicit | xla | cudnn (`layers.Attention`)
    learned_pos_embed: bool = False  # a `pos_embed` parameter, initialised from the sin-cos table

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

    def setup(self):
        self.patch_embed = PatchEmbed(self.patch_size, self.width, self.dtype)
        self.cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.width))
        self.blocks = Transformer(self.depth, self.width, self.num_heads, self.mlp_ratio, self.dtype, self.remat,
                                  self.drop_path, self.scan, self.attention)
        self.norm = LayerNorm()
        if self.learned_pos_embed:
            self.pos_embed = self.param("pos_embed", lambda _: self._sincos()[None])  # [1, 1+N, D]

    def _sincos(self):
        return jnp.asarray(posemb_sincos_2d(self.grid_size, self.grid_size, self.width))  # [1+N, D]

    def __call__(self, images, *, train: bool = False):
        """`encode` of every patch: normed tokens [B, 1+N, D]."""
        return self.encode(images, train=train)

    def encode(self, images, *, ids_keep=None, mask=None, mask_token=None, train: bool = False):
        """images: float [B, H, W, 3] (H = W = img_size) -> normed tokens [B, 1+K, D].

        ids_keep: optional int32 [B, K], the patches to encode (MAE visible tokens).
        mask / mask_token: optional bool [B, N] (True = masked) and [1, 1, D]: the masked
        patches' embeddings are replaced by mask_token before the position embedding is
        added (SimMIM's `VisionTransformerForSimMIM`); the token is the caller's parameter.
        """
        x = self._tokens(images, ids_keep, mask, mask_token)
        return self.norm(self.blocks(x, not train))

    def features(self, images, *, pool: str = "token", train: bool = False):
        """One feature per image [B, D]: pool="token" -> the normed cls token (timm
        global_pool='token'); "avg" -> LayerNorm of the mean patch token (timm
        global_pool='avg', MAE fine-tuning's fc_norm, with the same norm parameters)."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        x = self.blocks(self._tokens(images), not train)  # [B, 1+N, D]
        return self.norm(x[:, 1:].mean(axis=1)) if pool == "avg" else self.norm(x)[:, 0]

    def teacher_qk(self, images, *, block: int, head: int | None = None):
        """(q, k) of block `block` (0-indexed), head `head` (all heads when None), each
        [B, 1+N, 1 or H, hd] float32; nothing after them is computed. The attention logits
        are q k^T * hd^-0.5; a GPA teacher needs only column sums of them, O(T hd) from q and
        k (`masking.gpa_scores_from_qk`)."""
        return self.blocks.qk(self._tokens(images), block, head)

    def _tokens(self, images, ids_keep=None, mask=None, mask_token=None):
        """Patch embedding (+ SimMIM's mask token) + position, the kept patches, cls first:
        [B, 1+K, D]."""
        if (mask is None) != (mask_token is None):
            raise ValueError("mask and mask_token must be given together (SimMIM input masking)")
        if images.ndim != 4 or images.shape[1:3] != (self.img_size, self.img_size):
            raise ValueError(f"images must be [B, {self.img_size}, {self.img_size}, C], "
                             f"got shape {images.shape}")
        x = self.patch_embed(images)  # [B, N, D]
        b = x.shape[0]
        if mask is not None:  # SimMIM: x * (1 - w) + mask_token * w, w = 1 on masked patches
            w = mask.astype(x.dtype)[:, :, None]  # [B, N, 1]
            x = x * (1 - w) + mask_token.astype(x.dtype) * w
        pos = self.pos_embed[0] if self.learned_pos_embed else self._sincos()  # [1+N, D]
        x = x + pos[1:].astype(x.dtype)
        if ids_keep is not None:
            x = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)  # [B, K, D]
        cls = (self.cls_token + pos[:1]).astype(x.dtype)
        return jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], axis=1)  # [B, 1+K, D]


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
