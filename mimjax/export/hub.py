"""Export folders in the Hugging Face Hub / timm layout: `DIR/model.safetensors` and
`DIR/config.json`, which timm loads with no extra code:

    timm.create_model("local-dir:DIR", pretrained=True)       # architecture + weights from DIR
    timm.create_model("vit_base_patch16_224", pretrained=True, num_classes=0,
                      pretrained_cfg_overlay=dict(file="DIR/model.safetensors"))

config.json follows timm's `push_to_hf_hub` format: `architecture` (a registered timm name),
`num_classes` (0: features only), `num_features`, `global_pool`, `model_args` (the exact
patch size, width, depth, heads and image size, so non-standard sizes rebuild too) and
`pretrained_cfg` (input size, mean/std, interpolation, crop). Our own record rides along
under `mimjax`.
"""
from __future__ import annotations

import json

from mimjax import paths

WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"
# timm's registered ViT names by width (heads follow from the width for these sizes).
_TIMM_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}


def timm_config(arch: dict, *, global_pool: str, mean, std, crop_pct: float, extra: dict, num_classes: int = 0) -> dict:
    """config.json for an encoder of `arch` (mimjax.export.architecture: patch_size, width,
    depth, num_heads, img_size, mlp_ratio), with a classifier head of num_classes (0: none)."""
    size = _TIMM_SIZES.get(arch["width"], "base")  # model_args below carry the real shape
    patch = 14 if size == "huge" else 16
    s = arch["img_size"]
    return {
        "architecture": f"vit_{size}_patch{patch}_224",
        "num_classes": num_classes,
        "num_features": arch["width"],
        "global_pool": global_pool,
        "model_args": {"img_size": s, "patch_size": arch["patch_size"], "embed_dim": arch["width"],
                       "depth": arch["depth"], "num_heads": arch["num_heads"], "mlp_ratio": arch["mlp_ratio"],
                       "global_pool": global_pool, "class_token": True},
        "pretrained_cfg": {"input_size": [3, s, s], "fixed_input_size": True, "interpolation": "bicubic",
                           "crop_pct": crop_pct, "crop_mode": "center", "mean": list(mean), "std": list(std),
                           "num_classes": num_classes, "first_conv": "patch_embed.proj", "classifier": "head",
                           "license": "apache-2.0"},
        "mimjax": extra,
    }


def save_folder(state_dict: dict, folder: str, config: dict) -> list[str]:
    """Writes FOLDER/model.safetensors (no pickle) and FOLDER/config.json (local or gs://);
    returns both paths."""
    from mimjax.export.files import write_safetensors

    paths.makedirs(folder)
    weights, cfg = paths.join(folder, WEIGHTS_NAME), paths.join(folder, CONFIG_NAME)
    write_safetensors(state_dict, weights, {"format": "pt"})  # "pt": what timm and transformers expect
    paths.write_text(cfg, json.dumps(config, indent=2))
    return [weights, cfg]


def is_folder_output(out: str) -> bool:
    """An --out without a file suffix (.safetensors, .pth) is an export folder."""
    return not out.endswith((".safetensors", ".pth"))


def weights_in(path: str) -> str:
    """A folder holding model.safetensors -> that file; anything else unchanged."""
    return paths.join(path, WEIGHTS_NAME) if paths.isdir(path) else path
