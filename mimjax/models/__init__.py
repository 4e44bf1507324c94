"""Linen models: the ViT encoder (`vit`), the MAE with optional GPA head (`mae`), SimMIM with
optional GPA head (`simmim`); `model_from_config` / `init_model` pick one by `model.arch`."""
from mimjax.models.layers import posemb_sincos_2d
from mimjax.models.mae import (
    MAE,
    gpa_feature_loss,
    init_mae,
    mae,
    mae_from_config,
    patchify,
    pixel_target,
    unpatchify,
    zscore,
)
from mimjax.models.simmim import SimMIM, init_simmim, simmim, simmim_from_config
from mimjax.models.vit import VIT_VARIANTS, VisionTransformer, vit

ARCHS = {"mae": (mae_from_config, init_mae), "simmim": (simmim_from_config, init_simmim)}


def model_from_config(mc):
    """The model (MAE or SimMIM) a `model` config section describes, by `model.arch`
    ("mae" when the section predates the key)."""
    arch = mc.get("arch", "mae")
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r}: expected one of {sorted(ARCHS)}")
    return ARCHS[arch][0](mc)


def init_model(model, key, batch_size: int = 1):
    """Initial `params` of an MAE or a SimMIM (each with its own init rules)."""
    return init_mae(model, key, batch_size) if isinstance(model, MAE) else init_simmim(model, key, batch_size)


__all__ = ["ARCHS", "MAE", "VIT_VARIANTS", "SimMIM", "VisionTransformer", "gpa_feature_loss", "init_mae",
           "init_model", "init_simmim", "mae", "mae_from_config", "model_from_config", "patchify", "pixel_target",
           "posemb_sincos_2d", "simmim", "simmim_from_config", "unpatchify", "vit", "zscore"]
