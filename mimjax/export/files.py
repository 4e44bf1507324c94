"""State-dict files: `.safetensors` (no pickle) with a JSON sidecar, or `.pth` on request.
Nothing here imports torch except `.pth` I/O. Paths may be local or gs://... (mimjax.paths:
a remote file is written and read whole, as bytes)."""
from __future__ import annotations

import io
import json
import os

from mimjax import paths


def write_safetensors(state_dict: dict, path: str, metadata: dict) -> None:
    """A .safetensors file, local or remote, written whole (`paths.write_bytes`: never
    through a symbolic link); a local one is mode 0644."""
    from safetensors.numpy import save

    paths.write_bytes(path, save(state_dict, metadata=metadata))
    if not paths.is_remote(path):
        os.chmod(path, 0o644)  # whatever the umask; readable like the .json beside it


def save_state_dict(state_dict: dict, path: str, meta: dict) -> None:
    """`.safetensors` (+ `<path>.json` with meta) or `.pth` (torch.save of tensors + meta json)."""
    remote = paths.is_remote(path)
    if not remote:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if path.endswith(".safetensors"):
        write_safetensors(state_dict, path, {"mimjax": json.dumps(meta)})
    elif path.endswith(".pth"):
        torch = require_torch(path)
        buf = io.BytesIO()
        torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, buf)
        paths.write_bytes(path, buf.getvalue())  # whole, never through a link
    else:
        raise ValueError(f"output {path!r}: expected a .safetensors or .pth file name")
    paths.write_text(path + ".json", json.dumps(meta, indent=2))


def load_state_dict(path: str) -> dict:
    """Tensors from `.safetensors` or `.pth` (torch.load with weights_only=True: no code runs;
    anything but tensors, possibly under a 'model' key, is refused)."""
    if not paths.isfile(path):
        raise ValueError(f"{path!r} does not exist")
    remote = paths.is_remote(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load, load_file

        try:
            return load(paths.read_bytes(path)) if remote else load_file(path)
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends: not a safetensors file
            raise ValueError(f"{path!r} is not a readable .safetensors file "
                             f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    if path.endswith((".pth", ".pt", ".bin")):
        import pickle

        torch = require_torch(path)
        try:
            src = io.BytesIO(paths.read_bytes(path)) if remote else path
            obj = torch.load(src, map_location="cpu", weights_only=True)
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


def require_torch(path: str):
    """torch, or a ValueError naming the file when PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path!r}: .pth files need PyTorch, which is not installed (pip install torch, or "
                         f"the [torch] extra); .safetensors files do not") from None
    return torch
