"""Linen models: the ViT encoder (`vit`), the MAE with optional GPA head (`mae`)."""
from mimjax.models.layers import posemb_sincos_2d
from mimjax.models.mae import MAE, init_mae, mae, mae_from_config, patchify, pixel_target, unpatchify, zscore
from mimjax.models.vit import VIT_VARIANTS, VisionTransformer, vit

__all__ = ["vit", "mae", "VisionTransformer", "MAE", "VIT_VARIANTS", "init_mae", "mae_from_config", "patchify",
           "unpatchify", "pixel_target", "zscore", "posemb_sincos_2d"]
