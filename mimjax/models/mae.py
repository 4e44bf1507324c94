"""Masked autoencoder (MAE) with the optional GPA head (docs/method.md §1 and §4).

Reads as the method: patchify -> encode the visible patches -> embed, append mask tokens,
unshuffle -> pixel decoder -> MSE on masked patches; with `gpa_head`, a second decoder on
the same sequence predicts the teacher's z-scored GPA map (MSE on all patches).
The mask comes from outside (`mimjax.masking`), so any masking strategy plugs in.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mimjax.models.layers import LayerNorm, Transformer, patchify, posemb_sincos_2d, xavier_uniform
from mimjax.models.precision import mixed_dot_general, resolve_dtype, resolve_scan
from mimjax.models.vit import VisionTransformer, _check_overrides, vit_kwargs


def unpatchify(patches, patch_size: int, channels: int = 3):
    """[B, N, p*p*C] -> [B, H, W, C]; inverse of `patchify` for square grids."""
    b, n, _ = patches.shape
    p, g = patch_size, int(round(n ** 0.5))
    x = patches.reshape(b, g, g, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * p, g * p, channels)


def pixel_target(images, patch_size: int, norm_pix_loss: bool):
    """Reconstruction target [B, N, p*p*3]; with norm_pix_loss each patch is normalised by
    its own mean and (unbiased, as torch.var) variance + 1e-6."""
    target = patchify(images.astype(jnp.float32), patch_size)
    if norm_pix_loss:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    return target


def zscore(g):
    """GPA feature target: per-image (g - mean) / sqrt(var_unbiased + 1e-6); g [B, N]."""
    g = g.astype(jnp.float32)
    return (g - g.mean(-1, keepdims=True)) / jnp.sqrt(g.var(-1, keepdims=True, ddof=1) + 1e-6)


def gpa_feature_loss(gpa_pred, gpa_target):
    """docs/method.md §4 loss: MSE over all N patches between the head's prediction [B, N] and the
    teacher's z-scored GPA map g [B, N] (stop-gradient on the target)."""
    if gpa_target is None:
        raise ValueError("gpa_head=True needs gpa_target (the teacher's GPA scores [B, N])")
    return ((gpa_pred - jax.lax.stop_gradient(zscore(gpa_target))) ** 2).mean()


LATE_START = 0.75  # gpa_head_late_start: the head's blocks run only when progress > this (docs/method.md §4)


class MAE(nn.Module):
    encoder: VisionTransformer
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    gpa_head: bool = False
    # docs/method.md §4 quirk of the released code: the head's blocks only run when progress > 0.75.
    gpa_head_late_start: bool = False

    @nn.compact
    def __call__(self, images, mask, *, gpa_target=None, progress=1.0, train: bool = True):
        """images: float [B, H, W, 3]; mask: `mimjax.masking.Mask` (mask [B, N] bool,
        ids_keep [B, K], ids_restore [B, N]); gpa_target: the teacher's GPA scores g [B, N]
        in [0, 1] (needed when gpa_head); progress: scalar in [0, 1] (traced is fine).

        Returns a dict: loss, pixel_loss, gpa_loss (scalars, float32), pred [B, N, p*p*3]
        (in the target's space: per-patch normalised when norm_pix_loss), mask [B, N] bool,
        and gpa_pred [B, N] when gpa_head.
        """
        enc = self.encoder
        dtype = enc.dtype
        latent = enc.encode(images, ids_keep=mask.ids_keep, train=train)  # [B, 1+K, D]
        b, n = mask.ids_restore.shape

        # Decoder input: visible tokens + mask tokens, back in patch order, + position.
        dense = functools.partial(nn.Dense, dtype=jnp.float32, dot_general=mixed_dot_general(dtype),
                                  kernel_init=xavier_uniform)  # products in `dtype`, float32 out
        x = dense(self.decoder_width, name="decoder_embed")(latent)  # [B, 1+K, Dd]
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.decoder_width))
        k = x.shape[1] - 1
        filler = jnp.broadcast_to(mask_token.astype(x.dtype), (b, n - k, self.decoder_width))
        tokens = jnp.concatenate([x[:, 1:], filler], axis=1)  # [B, N, Dd], shuffled order
        tokens = jnp.take_along_axis(tokens, mask.ids_restore[:, :, None], axis=1)  # unshuffle
        x = jnp.concatenate([x[:, :1], tokens], axis=1)  # [B, 1+N, Dd]
        pos = posemb_sincos_2d(enc.grid_size, enc.grid_size, self.decoder_width)
        x = x + jnp.asarray(pos, x.dtype)

        def decoder(x, prefix, out_dim):  # x: [B, 1+N, Dd]
            y = Transformer(self.decoder_depth, self.decoder_width, self.decoder_heads, enc.mlp_ratio, dtype,
                            enc.remat, scan=enc.scan, attention=enc.attention, name=f"{prefix}_blocks")(x)
            y = LayerNorm(name=f"{prefix}_norm")(y)
            y = dense(out_dim, name=f"{prefix}_pred")(y)
            return y[:, 1:]  # drop cls; float32

        p = enc.patch_size
        pred = decoder(x, "decoder", p * p * images.shape[-1])  # [B, N, p*p*3]
        target = pixel_target(images, p, self.norm_pix_loss)
        m = mask.mask.astype(jnp.float32)  # [B, N], 1 = masked
        pixel_loss = (((pred - target) ** 2).mean(-1) * m).sum() / m.sum()
        out = dict(pixel_loss=pixel_loss, pred=pred, mask=mask.mask)

        gpa_loss = jnp.zeros((), jnp.float32)
        if self.gpa_head:
            head = lambda mdl, x: decoder(x, "gpa", p * p * images.shape[-1]).mean(-1)  # [B, N]
            if self.gpa_head_late_start and not self.is_initializing():
                # Released code: before progress 0.75 the prediction is the channel mean of
                # the head's input, and its loss still trains encoder + mask token. The
                # head's blocks are skipped then, not computed and discarded (a decoder's
                # worth of compute in 75% of the steps): a lifted lax.cond. Init runs the
                # head, so its params exist whatever the progress.
                early = lambda mdl, x: x[:, 1:].astype(jnp.float32).mean(-1)  # [B, N]
                gpa_pred = nn.cond(jnp.asarray(progress) > LATE_START, head, early, self, x)
            else:
                gpa_pred = head(self, x)
            gpa_loss = gpa_feature_loss(gpa_pred, gpa_target)
            out["gpa_pred"] = gpa_pred
        out["gpa_loss"] = gpa_loss
        out["loss"] = pixel_loss + gpa_loss
        return out


def init_params(model, key, batch_size: int = 1):
    """`model.init` on dummy inputs (zero images, a random mask, zero GPA scores when the
    model has a GPA head) for any model with the MAE call signature. Returns `params`."""
    from mimjax.masking import random_mask  # masking has no Flax dependency; import here keeps models standalone

    enc = model.encoder
    images = jnp.zeros((batch_size, enc.img_size, enc.img_size, 3), jnp.float32)
    k_init, k_mask = jax.random.split(key)
    mask = random_mask(k_mask, batch_size, enc.num_patches, 0.75)
    gpa = jnp.zeros((batch_size, enc.num_patches)) if model.gpa_head else None
    return model.init(k_init, images, mask, gpa_target=gpa, train=False)["params"]


def init_mae(model: MAE, key, batch_size: int = 1):
    """Initialise MAE params; the GPA head's blocks start as copies of the pixel decoder's
    (docs/method.md §4). Returns the `params` collection."""
    params = init_params(model, key, batch_size)
    if model.gpa_head:
        params = {**params, "gpa_blocks": params["decoder_blocks"]}
    return params


MAE_DEFAULTS = dict(decoder_width=512, decoder_depth=8, decoder_heads=16)


def mae(name: str, **overrides) -> MAE:
    """`mae("mae_vit_base_patch16")`, `mae("mae_vit_tiny_patch16", img_size=64, patch_size=8,
    gpa_head=True)`. Encoder arguments (img_size, dtype, remat, ...) and MAE arguments
    (decoder_*, norm_pix_loss, gpa_head, ...) may both be overridden."""
    if not name.startswith("mae_"):
        raise ValueError(f"MAE names start with 'mae_' (e.g. 'mae_vit_base_patch16'), got {name!r}")
    enc_fields = {f.name for f in dataclasses.fields(VisionTransformer)}
    enc_over = {k: v for k, v in overrides.items() if k in enc_fields and k not in ("parent", "name")}
    mae_over = {k: v for k, v in overrides.items() if k not in enc_over}
    _check_overrides(MAE, name, {k: v for k, v in mae_over.items()})
    encoder = VisionTransformer(**{**vit_kwargs(name[len("mae_"):]), **enc_over})
    return MAE(encoder=encoder, **{**MAE_DEFAULTS, **mae_over})


def mae_from_config(mc) -> MAE:
    """The MAE a `model` config section (mimjax/train/config.py) describes."""
    over = dict(img_size=mc.img_size, dtype=resolve_dtype(mc.dtype), remat=mc.remat,
                scan=resolve_scan(mc.get("scan", False), mc.remat),
                attention=mc.get("attention", "auto"), learned_pos_embed=mc.get("learned_pos_embed", False),
                norm_pix_loss=mc.norm_pix_loss, gpa_head=mc.gpa_head,
                gpa_head_late_start=mc.gpa_head_late_start, decoder_width=mc.decoder_width,
                decoder_depth=mc.decoder_depth, decoder_heads=mc.decoder_heads)
    over.update({k: mc[k] for k in ("patch_size", "width", "depth", "num_heads") if mc.get(k)})
    return mae(mc.name, **over)
