"""State-dict files: `.safetensors` (no pickle) with a JSON sidecar, or `.pth` on request.
Nothing here imports torch except `.pth` I/O."""
from __future__ import annotations

import json
import os


def save_state_dict(state_dict: dict, path: str, meta: dict) -> None:
    """`.safetensors` (+ `<path>.json` with meta) or `.pth` (torch.save of tensors + meta json)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(state_dict, path, metadata={"mimjax": json.dumps(meta)})
    elif path.endswith(".pth"):
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
    else:
        raise ValueError(f"output {path!r}: expected a .safetensors or .pth file name")
    with open(path + ".json", "w") as f:
        json.dump(meta, f, indent=2)


def load_state_dict(path: str) -> dict:
    """Tensors from `.safetensors` or `.pth` (torch.load with weights_only=True: no code runs;
    anything but tensors, possibly under a 'model' key, is refused)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends: not a safetensors file
            raise ValueError(f"{path!r} is not a readable .safetensors file "
                             f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    if path.endswith((".pth", ".pt", ".bin")):
        import pickle

        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - anything torch cannot load as plain tensors
            # torch's own text recommends weights_only=False (running the file's code): not quoted.
            why = ("it holds Python objects besides tensors" if isinstance(e, pickle.UnpicklingError)
                   and "weights" in str(e).lower() else f"not a PyTorch checkpoint file: {type(e).__name__}")
            raise ValueError(f"{path!r} is not a plain tensor checkpoint; refused without running it ({why}); "
                             f"expected a state dict of tensors (.pth, optionally under 'model') or a "
                             f".safetensors file") from None
        inner = obj.get("model", obj) if isinstance(obj, dict) else obj
        if not isinstance(inner, dict) or not all(isinstance(v, torch.Tensor) for v in inner.values()):
            raise ValueError(f"{path!r} holds {type(inner).__name__} entries that are not all tensors; "
                             f"expected a state dict (optionally under 'model')")
        return {k: v.float().numpy() for k, v in inner.items()}
    raise ValueError(f"input {path!r}: expected a .safetensors or .pth file")
