"""PyTorch interop: timm / official MAE state-dict layouts (`layouts`) and their files (`files`)."""
from mimjax.export.files import load_state_dict, save_state_dict
from mimjax.export.layouts import (
    architecture,
    from_torch_state_dict,
    nonfinite,
    shape_mismatches,
    to_mae_state_dict,
    to_timm_state_dict,
)

__all__ = ["architecture", "from_torch_state_dict", "load_state_dict", "nonfinite", "save_state_dict",
           "shape_mismatches", "to_mae_state_dict", "to_timm_state_dict"]
