"""SimMIM (Xie et al. 2022, microsoft/SimMIM) with the optional GPA head: GPA masking and
the GPA feature task on a second masked-image-modeling architecture.

Reads as the method: the encoder sees every patch, the masked ones replaced by a learned
mask token before the position embedding (SimMIM's `VisionTransformerForSimMIM`) -> a
linear pixel head on each patch token (SimMIM's 1x1 conv to p*p*3 + PixelShuffle, i.e. a
Dense per token) -> L1 on the masked pixels. With `gpa_head`, a linear head on the same
encoder tokens predicts the teacher's z-scored GPA map, with the GPA-MAE loss
(`gpa_feature_loss`, docs/method.md §4). Same inputs (a `mimjax.masking.Mask`) and outputs as
`MAE.__call__`, so the trainer, the teacher and the snapshot PNGs work unchanged.

Differences from the released SimMIM ViT (ours): fixed 2-D sin-cos position embedding (as
the MAE encoder here; SimMIM uses a shared relative position bias), no layer scale, and the
mask is drawn per patch (SimMIM masks 32x32 blocks of 16x16 patches).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp

from mimjax.models.layers import xavier_uniform
from mimjax.models.mae import gpa_feature_loss, init_params, pixel_target
from mimjax.models.precision import mixed_dot_general, resolve_dtype, resolve_scan
from mimjax.models.vit import VisionTransformer, _check_overrides, vit_kwargs


class SimMIM(nn.Module):
    encoder: VisionTransformer
    norm_pix_loss: bool = False  # SimMIM regresses the (ImageNet-normalised) pixels themselves
    gpa_head: bool = False

    @nn.compact
    def __call__(self, images, mask, *, gpa_target=None, progress=1.0, train: bool = True):
        """images: float [B, H, W, 3]; mask: `mimjax.masking.Mask` (only `mask.mask` [B, N]
        is read: every patch is encoded); gpa_target: the teacher's GPA scores g [B, N] in
        [0, 1] (needed when gpa_head); progress: unused (the MAE signature).

        Returns a dict: loss, pixel_loss, gpa_loss (scalars, float32), pred [B, N, p*p*3]
        (patchify order; per-patch normalised when norm_pix_loss), mask [B, N] bool, and
        gpa_pred [B, N] when gpa_head.
        """
        del progress
        enc = self.encoder
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, enc.width))
        latent = enc.encode(images, mask=mask.mask, mask_token=mask_token, train=train)  # [B, 1+N, D]
        tokens = latent[:, 1:]  # [B, N, D]: SimMIM drops cls before its decoder

        p, c = enc.patch_size, images.shape[-1]
        dense = functools.partial(nn.Dense, p * p * c, dtype=jnp.float32, dot_general=mixed_dot_general(enc.dtype),
                                  kernel_init=xavier_uniform)  # products in enc.dtype, float32 out
        pred = dense(name="decoder_pred")(tokens)  # [B, N, p*p*C] float32
        target = pixel_target(images, p, self.norm_pix_loss)  # [B, N, p*p*C]
        m = mask.mask.astype(jnp.float32)  # [B, N], 1 = masked
        # SimMIM: sum(|x - x_rec| * mask) / (sum(mask) + 1e-5) / in_chans, with the mask at
        # pixel level [B, 1, H, W]: p*p masked pixels per masked patch.
        pixel_loss = (jnp.abs(pred - target).sum(-1) * m).sum() / (m.sum() * p * p + 1e-5) / c
        out = {"pixel_loss": pixel_loss, "pred": pred, "mask": mask.mask}

        gpa_loss = jnp.zeros((), jnp.float32)
        if self.gpa_head:
            # docs/method.md §4's output layer (linear to p*p*3, mean over the last axis) on the
            # encoder tokens; SimMIM has no decoder blocks to copy.
            gpa_pred = dense(name="gpa_pred")(tokens).mean(-1)  # [B, N]
            gpa_loss = gpa_feature_loss(gpa_pred, gpa_target)
            out["gpa_pred"] = gpa_pred
        out["gpa_loss"] = gpa_loss
        out["loss"] = pixel_loss + gpa_loss
        return out


def init_simmim(model: SimMIM, key, batch_size: int = 1):
    """Initialise SimMIM params. Returns the `params` collection (encoder params under
    "encoder", named as the ViT's, so EMA/self teachers and timm export read them)."""
    return init_params(model, key, batch_size)


def simmim(name: str, **overrides) -> SimMIM:
    """`simmim("simmim_vit_base_patch16")`, `simmim("simmim_vit_tiny_patch16", img_size=64,
    patch_size=8, gpa_head=True)`. Encoder and SimMIM arguments may both be overridden."""
    if not name.startswith("simmim_"):
        raise ValueError(f"SimMIM names start with 'simmim_' (e.g. 'simmim_vit_base_patch16'), got {name!r}")
    enc_fields = {f.name for f in dataclasses.fields(VisionTransformer)} - {"parent", "name"}
    enc_over = {k: v for k, v in overrides.items() if k in enc_fields}
    own = {k: v for k, v in overrides.items() if k not in enc_over}
    _check_overrides(SimMIM, name, own)
    encoder = VisionTransformer(**{**vit_kwargs(name[len("simmim_"):]), **enc_over})
    return SimMIM(encoder=encoder, **own)


def simmim_from_config(mc) -> SimMIM:
    """The SimMIM a `model` config section describes (model.arch = "simmim"). model.name keeps
    the schema's "mae_<vit>" form for every arch; decoder_* and gpa_head_late_start are MAE's."""
    over = {"img_size": mc.img_size, "dtype": resolve_dtype(mc.dtype), "remat": mc.remat,
            "scan": resolve_scan(mc.get("scan", False), mc.remat),
            "attention": mc.get("attention", "auto"), "learned_pos_embed": mc.get("learned_pos_embed", False),
            "norm_pix_loss": mc.norm_pix_loss, "gpa_head": mc.gpa_head}
    over.update({k: mc[k] for k in ("patch_size", "width", "depth", "num_heads") if mc.get(k)})
    return simmim("simmim_" + mc.name[len("mae_"):], **over)
