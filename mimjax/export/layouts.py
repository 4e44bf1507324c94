"""PyTorch interop: mimjax params <-> timm `VisionTransformer` and official MAE
`MaskedAutoencoderViT` state dicts (REFERENCE.md "timm VisionTransformer state dict").

Flax -> PyTorch: Dense kernel [in, out] -> weight [out, in]; conv kernel HWIO -> OIHW;
q/k/v kernels [D, H, hd] -> one qkv weight [3D, D] (q, k, v stacked); out kernel [H, hd, D]
-> proj weight [D, D]; LayerNorm scale -> weight. Position embeddings are the fixed 2-D
sin-cos tables in pre-training (not parameters) and are written as such for timm/MAE; a
fine-tuned encoder's learned `pos_embed` is written as it is, and one read on import that is
not the table (a fine-tuned or supervised timm ViT) is kept as the encoder's parameter.
A fine-tuned classifier's `head` is written as timm's `head.*`.

State dicts here are dicts of numpy arrays; nothing here imports torch (files: `files.py`).
"""
from __future__ import annotations

import logging

import numpy as np

from mimjax.models.layers import posemb_sincos_2d
from mimjax.models.vit import VIT_VARIANTS

log = logging.getLogger("mimjax")

_BLOCK_NORMS = ("norm1", "norm2")


def _ln(p):
    return {"weight": p["scale"], "bias": p["bias"]}


def _block_to_torch(b) -> dict:
    """One mimjax block -> timm block keys (without the `blocks.{i}.` prefix)."""
    a = b["attn"]
    d = a["query"]["kernel"].shape[0]
    out = {}
    for n in _BLOCK_NORMS:
        out.update({f"{n}.{k}": v for k, v in _ln(b[n]).items()})
    out["attn.qkv.weight"] = np.concatenate([a[n]["kernel"].reshape(d, d).T for n in ("query", "key", "value")])
    out["attn.qkv.bias"] = np.concatenate([a[n]["bias"].reshape(d) for n in ("query", "key", "value")])
    out["attn.proj.weight"] = a["out"]["kernel"].reshape(d, d).T
    out["attn.proj.bias"] = a["out"]["bias"]
    for fc in ("fc1", "fc2"):
        out[f"mlp.{fc}.weight"] = b["mlp"][fc]["kernel"].T
        out[f"mlp.{fc}.bias"] = b["mlp"][fc]["bias"]
    return out


def _block_from_torch(sd, prefix: str, heads: int) -> dict:
    w = lambda k: np.asarray(sd[prefix + k])
    d = w("attn.proj.weight").shape[0]
    hd = d // heads
    qkv_w, qkv_b = np.split(w("attn.qkv.weight"), 3), np.split(w("attn.qkv.bias"), 3)
    attn = {n: {"kernel": qkv_w[i].T.reshape(d, heads, hd), "bias": qkv_b[i].reshape(heads, hd)}
            for i, n in enumerate(("query", "key", "value"))}
    attn["out"] = {"kernel": w("attn.proj.weight").T.reshape(heads, hd, d), "bias": w("attn.proj.bias")}
    b = {n: {"scale": w(f"{n}.weight"), "bias": w(f"{n}.bias")} for n in _BLOCK_NORMS}
    b["attn"] = attn
    b["mlp"] = {fc: {"kernel": w(f"mlp.{fc}.weight").T, "bias": w(f"mlp.{fc}.bias")} for fc in ("fc1", "fc2")}
    return b


def _np(tree):
    return {k: _np(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree, np.float32)


def _encoder_params(params):
    params = _np(params)
    return params["encoder"] if "encoder" in params else params


def _grid(params_enc, img_size: int) -> tuple[int, int]:
    p = params_enc["patch_embed"]["kernel"].shape[0]
    if img_size % p:
        raise ValueError(f"img_size={img_size} is not divisible by the patch size {p}")
    return p, img_size // p


def to_timm_state_dict(params, name: str, *, img_size: int = 224, global_pool: str = "token") -> dict:
    """Encoder params (or full MAE params) -> timm VisionTransformer state dict (no head).

    global_pool 'token' writes `norm.*`; 'avg' writes `fc_norm.*` (timm's avg-pool layout,
    matching the encoder's pool='avg'). `name` (e.g. 'vit_base_patch16') must be a known
    size; custom widths/depths export the same way (timm's VisionTransformer(**kwargs))."""
    if global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
    enc = _encoder_params(params)
    if name not in VIT_VARIANTS:
        raise ValueError(f"unknown ViT name {name!r}; expected one of {sorted(VIT_VARIANTS)}")
    p, grid = _grid(enc, img_size)
    d = enc["cls_token"].shape[-1]
    pos = enc["pos_embed"] if "pos_embed" in enc else posemb_sincos_2d(grid, grid, d)[None]  # [1, 1+N, D]
    sd = {"cls_token": enc["cls_token"], "pos_embed": pos,
          "patch_embed.proj.weight": enc["patch_embed"]["kernel"].transpose(3, 2, 0, 1),
          "patch_embed.proj.bias": enc["patch_embed"]["bias"]}
    i = 0
    while f"block_{i}" in enc["blocks"]:
        sd.update({f"blocks.{i}.{k}": v for k, v in _block_to_torch(enc["blocks"][f"block_{i}"]).items()})
        i += 1
    norm = "norm" if global_pool == "token" else "fc_norm"
    sd.update({f"{norm}.{k}": v for k, v in _ln(enc["norm"]).items()})
    if "head" in params:  # a fine-tuned classifier (mimjax.eval.finetune.Classifier)
        head = _np(params["head"])
        sd.update({"head.weight": head["kernel"].T, "head.bias": head["bias"]})
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def to_mae_state_dict(params, name: str, *, img_size: int = 224) -> dict:
    """Full MAE params -> official `MaskedAutoencoderViT` state dict (encoder, mask token,
    decoder, pixel head). The GPA head has no place in that layout and is not written."""
    params = _np(params)
    if "decoder_blocks" not in params:
        raise ValueError("to_mae_state_dict needs full MAE params (encoder + decoder), got encoder params")
    sd = to_timm_state_dict(params, name, img_size=img_size)
    _, grid = _grid(params["encoder"], img_size)
    dd = params["mask_token"].shape[-1]
    sd.update({"mask_token": params["mask_token"], "decoder_pos_embed": posemb_sincos_2d(grid, grid, dd)[None],
               "decoder_embed.weight": params["decoder_embed"]["kernel"].T,
               "decoder_embed.bias": params["decoder_embed"]["bias"],
               "decoder_pred.weight": params["decoder_pred"]["kernel"].T,
               "decoder_pred.bias": params["decoder_pred"]["bias"]})
    sd.update({f"decoder_norm.{k}": v for k, v in _ln(params["decoder_norm"]).items()})
    dec = params["decoder_blocks"]
    i = 0
    while f"block_{i}" in dec:
        sd.update({f"decoder_blocks.{i}.{k}": v for k, v in _block_to_torch(dec[f"block_{i}"]).items()})
        i += 1
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def _count(sd, prefix: str) -> int:
    i = 0
    while f"{prefix}{i}.norm1.weight" in sd:
        i += 1
    return i


def from_torch_state_dict(state_dict, name: str, *, img_size: int = 224, decoder_heads: int = 16,
                          arch: dict | None = None) -> dict:
    """timm ViT or official MAE state dict (optionally under a 'model' key) -> mimjax params:
    {'encoder': ...} plus the decoder when the dict has one. Missing, unexpected and
    mis-shaped keys are listed by name in a ValueError; a classifier `head.*` is dropped.
    arch: the encoder's patch_size / width / depth / num_heads where they differ from the
    name's (a custom size, as `model.patch_size` etc. give)."""
    sd = dict(state_dict.get("model", state_dict)) if isinstance(state_dict, dict) else None
    if sd is None:
        raise ValueError(f"expected a dict of tensors, got {type(state_dict).__name__}")
    sd = {k: _to_numpy(k, v) for k, v in sd.items()}
    for k in [k for k in sd if k.startswith("head.")]:
        log.info("dropping the classifier %s %s", k, sd.pop(k).shape)
    if name not in VIT_VARIANTS:
        raise ValueError(f"unknown ViT name {name!r}; expected one of {sorted(VIT_VARIANTS)}")
    arch = {k: v for k, v in (arch or {}).items() if v}
    patch, width, depth, heads = (arch.get(k, v) for k, v in zip(("patch_size", "width", "depth", "num_heads"),
                                                                  VIT_VARIANTS[name]))
    has_decoder = "decoder_embed.weight" in sd
    expected = _expected_shapes(sd, name, img_size, has_decoder, arch)
    problems = shape_mismatches({k: v.shape for k, v in sd.items()}, expected)
    if problems:
        raise ValueError(f"state dict does not match {name} ({'MAE' if has_decoder else 'timm'} layout, "
                         f"img_size {img_size}): " + "; ".join(problems))
    grid = img_size // patch
    norm = "fc_norm" if "fc_norm.weight" in sd else "norm"
    enc = {"cls_token": sd["cls_token"],
           "patch_embed": {"kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
                           "bias": sd["patch_embed.proj.bias"]},
           "blocks": {f"block_{i}": _block_from_torch(sd, f"blocks.{i}.", heads) for i in range(depth)},
           "norm": {"scale": sd[f"{norm}.weight"], "bias": sd[f"{norm}.bias"]}}
    if "pos_embed" in sd and float(np.abs(sd["pos_embed"][0] - posemb_sincos_2d(grid, grid, width)).max()) > 1e-3:
        log.info("pos_embed is not the fixed 2-D sin-cos table (a fine-tuned ViT): kept as the encoder's parameter")
        enc["pos_embed"] = sd["pos_embed"]
    params = {"encoder": enc}
    if has_decoder:
        params.update({
            "mask_token": sd["mask_token"],
            "decoder_embed": {"kernel": sd["decoder_embed.weight"].T, "bias": sd["decoder_embed.bias"]},
            "decoder_blocks": {f"block_{i}": _block_from_torch(sd, f"decoder_blocks.{i}.", decoder_heads)
                               for i in range(_count(sd, "decoder_blocks."))},
            "decoder_norm": {"scale": sd["decoder_norm.weight"], "bias": sd["decoder_norm.bias"]},
            "decoder_pred": {"kernel": sd["decoder_pred.weight"].T, "bias": sd["decoder_pred.bias"]}})
    return params


def _to_numpy(key, v):
    if isinstance(v, np.ndarray):
        return v.astype(np.float32)
    if type(v).__module__.startswith("torch") and hasattr(v, "detach"):
        return v.detach().float().cpu().numpy()
    raise ValueError(f"state dict entry {key!r} is a {type(v).__name__}, not a tensor")


def _expected_shapes(sd, name, img_size, has_decoder, arch=None) -> dict:
    """The key -> shape table a state dict of this architecture has (from a zero model)."""
    import jax
    import jax.numpy as jnp

    from mimjax.models import init_mae, mae, vit

    if has_decoder:
        dd = sd["decoder_embed.weight"].shape[0]
        dec_depth = _count(sd, "decoder_blocks.")
        model = mae("mae_" + name, img_size=img_size, decoder_width=dd, decoder_depth=max(dec_depth, 1),
                    decoder_heads=_heads_for(dd), norm_pix_loss=True, **(arch or {}))
        params = jax.eval_shape(lambda: init_mae(model, jax.random.key(0)))
        table = to_mae_state_dict(_zeros(params), name, img_size=img_size)
    else:
        model = vit(name, img_size=img_size, **(arch or {}))
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, img_size, img_size, 3))))
        pool = "avg" if "fc_norm.weight" in sd else "token"
        table = to_timm_state_dict(_zeros(params["params"]), name, img_size=img_size, global_pool=pool)
    return {k: v.shape for k, v in table.items()}


def _heads_for(width: int) -> int:
    return 16 if width % 16 == 0 else 1


def architecture(params, img_size: int) -> dict:
    """What a loader needs to rebuild the encoder: patch, width, depth, heads, image size."""
    enc = _encoder_params(params)
    q = enc["blocks"]["block_0"]["attn"]["query"]["kernel"]
    return {"patch_size": int(enc["patch_embed"]["kernel"].shape[0]), "width": int(q.shape[0]),
            "depth": len(enc["blocks"]), "num_heads": int(q.shape[1]), "img_size": img_size,
            "mlp_ratio": enc["blocks"]["block_0"]["mlp"]["fc1"]["kernel"].shape[1] / q.shape[0]}


def _zeros(abstract):
    return {k: _zeros(v) for k, v in abstract.items()} if isinstance(abstract, dict) else \
        np.zeros(abstract.shape, np.float32)


def shape_mismatches(got: dict, expected: dict) -> list[str]:
    """name -> shape tables compared: readable 'missing keys: ...', 'unexpected keys: ...',
    'wrong shapes: k (got) (expected ...)' lines, empty when they agree."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(f"{k} {tuple(got[k])} (expected {tuple(expected[k])})"
                   for k in set(got) & set(expected) if tuple(got[k]) != tuple(expected[k]))
    return [f"{label}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''} ({len(names)} in all)"
            for label, names in (("missing keys", missing), ("unexpected keys", extra),
                                 ("wrong shapes", wrong)) if names]


def nonfinite(tensors) -> str:
    """'' when every value of `tensors` (name -> array, or nested dicts of them, named by
    dotted paths) is finite; else a phrase naming the first tensor holding a NaN or inf and
    how many of its values do, with the totals when several do."""
    bad = []
    for name, v in _dotted(tensors):
        a = np.asarray(v)
        n = a.size - int(np.count_nonzero(np.isfinite(a)))
        if n:
            bad.append((name, n, a.size))
    if not bad:
        return ""
    name, n, size = bad[0]
    more = (f" ({len(bad)} tensors hold {sum(b[1] for b in bad)} non-finite values in all)" if len(bad) > 1
            else "")
    return f"{name} has {n} of its {size} values NaN or inf{more}"


def _dotted(tree, prefix: str = ""):
    """(dotted name, leaf) of nested dicts, in their order."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _dotted(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
