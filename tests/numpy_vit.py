"""An independent NumPy (float64) ViT/MAE forward, written from the MAE/timm equations,
used to check the Flax models. It reads the Flax parameter tree but shares no code with it."""
import numpy as np
from scipy.special import erf


def layer_norm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def dense(x, p):
    return x @ p["kernel"] + p["bias"]


def sincos_1d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2.0))
    out = np.outer(pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(grid, dim):
    """MAE's get_2d_sincos_pos_embed(dim, grid, cls_token=True): first half of channels
    from the column index (w), second half from the row index (h)."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def attention(x, p, heads):
    """Returns (out, logits [B, H, T, T])."""
    b, t, d = x.shape
    hd = d // heads
    q, k, v = (np.einsum("btd,dhe->bthe", x, p[n]["kernel"]) + p[n]["bias"]
               for n in ("query", "key", "value"))
    logits = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(hd)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhe->bqhe", w, v)
    return np.einsum("bqhe,hed->bqd", o, p["out"]["kernel"]) + p["out"]["bias"], logits


def block(x, p, heads):
    y, logits = attention(layer_norm(x, p["norm1"]), p["attn"], heads)
    x = x + y
    h = dense(layer_norm(x, p["norm2"]), p["mlp"]["fc1"])
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # exact GELU
    return x + dense(h, p["mlp"]["fc2"]), logits


def patches(images, p):
    b, hh, ww, c = images.shape
    g = hh // p
    return images.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * c)


def encoder(params, images, patch, heads, ids_keep=None):
    """Returns (normed tokens, list of per-block logits)."""
    x, all_logits = blocks_out(params, images, patch, heads, ids_keep)
    return layer_norm(x, to64(params)["norm"]), all_logits


def features(params, images, patch, heads, pool):
    """timm's pooled feature [B, D]: 'token' -> the normed cls token; 'avg' -> the norm of
    the mean patch token (timm's fc_norm, here with the encoder's final norm parameters)."""
    x, _ = blocks_out(params, images, patch, heads)
    if pool == "avg":
        return layer_norm(x[:, 1:].mean(1), to64(params)["norm"])
    return layer_norm(x, to64(params)["norm"])[:, 0]


def blocks_out(params, images, patch, heads, ids_keep=None):
    """The tokens after the last block, before the final norm, and the per-block logits."""
    params = to64(params)
    k = params["patch_embed"]["kernel"]  # [p, p, c, D]
    x = patches(np.asarray(images, np.float64), patch) @ k.reshape(-1, k.shape[-1]) + params["patch_embed"]["bias"]
    d = x.shape[-1]
    pos = sincos_2d(int(round(x.shape[1] ** 0.5)), d)
    x = x + pos[1:]
    if ids_keep is not None:
        x = np.take_along_axis(x, np.asarray(ids_keep)[:, :, None], axis=1)
    cls = np.broadcast_to(params["cls_token"] + pos[:1], (x.shape[0], 1, d))
    x = np.concatenate([cls, x], axis=1)
    all_logits = []
    i = 0
    while f"block_{i}" in params["blocks"]:
        x, lg = block(x, params["blocks"][f"block_{i}"], heads)
        all_logits.append(lg)
        i += 1
    return x, all_logits


def to64(tree):
    if isinstance(tree, dict):
        return {k: to64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


def mae_loss(params, images, mask, ids_keep, patch, heads, dec_heads, norm_pix=True):
    """Plain MAE forward + masked MSE; returns (loss, pred [B, N, p*p*3])."""
    latent, _ = encoder(params["encoder"], images, patch, heads, ids_keep)
    p = to64(params)
    x = dense(latent, p["decoder_embed"])
    b, n = mask.shape
    mask = np.asarray(mask)
    seq = np.zeros((b, n, x.shape[-1]))
    for i in range(b):  # visible tokens go back to their patch slots, mask token elsewhere
        seq[i, np.asarray(ids_keep)[i]] = x[i, 1:]
        seq[i, mask[i]] = p["mask_token"][0, 0]
    x = np.concatenate([x[:, :1], seq], axis=1) + sincos_2d(int(round(n ** 0.5)), x.shape[-1])
    i = 0
    while f"block_{i}" in p["decoder_blocks"]:
        x, _ = block(x, p["decoder_blocks"][f"block_{i}"], dec_heads)
        i += 1
    pred = dense(layer_norm(x, p["decoder_norm"]), p["decoder_pred"])[:, 1:]
    target = patches(np.asarray(images, np.float64), patch)
    if norm_pix:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum(), pred


def encoder_with_mask_token(params, images, patch, heads, mask, mask_token):
    """SimMIM's encoder (VisionTransformerForSimMIM): every patch embedded, masked ones
    (mask [B, N] bool) replaced by mask_token [1, 1, D] before the position embedding.
    Returns the normed tokens [B, 1+N, D]."""
    params = to64(params)
    k = params["patch_embed"]["kernel"]  # [p, p, c, D]
    x = patches(np.asarray(images, np.float64), patch) @ k.reshape(-1, k.shape[-1]) + params["patch_embed"]["bias"]
    w = np.asarray(mask, np.float64)[:, :, None]
    x = x * (1 - w) + np.asarray(mask_token, np.float64) * w
    d = x.shape[-1]
    pos = sincos_2d(round(x.shape[1] ** 0.5), d)
    x = np.concatenate([np.broadcast_to(params["cls_token"], (x.shape[0], 1, d)), x], axis=1) + pos
    i = 0
    while f"block_{i}" in params["blocks"]:
        x, _ = block(x, params["blocks"][f"block_{i}"], heads)
        i += 1
    return layer_norm(x, params["norm"])


def simmim_loss(params, images, mask, patch, heads, norm_pix=False):
    """SimMIM forward + its L1 loss, computed in image layout as the released code does:
    sum(|x - x_rec| * pixel_mask) / (sum(pixel_mask) + 1e-5) / channels.
    Returns (loss, pred [B, N, p*p*3])."""
    latent = encoder_with_mask_token(params["encoder"], images, patch, heads, mask, params["mask_token"])
    pred = dense(latent[:, 1:], to64(params)["decoder_pred"])  # [B, N, p*p*3]
    images = np.asarray(images, np.float64)
    target = patches(images, patch)
    if norm_pix:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    b, hh, ww, c = images.shape
    g = hh // patch

    def image(x):  # [B, N, p*p*c] -> [B, H, W, c]
        return x.reshape(b, g, g, patch, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)

    grid_mask = np.asarray(mask, np.float64).reshape(b, g, g)
    pixel_mask = np.repeat(np.repeat(grid_mask, patch, axis=1), patch, axis=2)[..., None]  # [B, H, W, 1]
    loss = (np.abs(image(target) - image(pred)) * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / c
    return loss, pred
