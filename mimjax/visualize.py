"""PNGs a person looks at instead of numbers: reconstruction grids and training curves.
Host-side NumPy + PIL only.

Grid layout: one row per image, square cells of the image size, no separators; columns
original | masked input (masked patches grey 128) | reconstruction | reconstruction on the
visible patches | GPA heatmap (if scores given) | mask at another progress (if given).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from mimjax.data.augment import IMAGENET_MEAN, IMAGENET_STD, denormalize
from mimjax.models.mae import patchify, unpatchify

GREY = 128


def _viridis_like(t):
    """t in [0, 1] [...] -> uint8 [..., 3]: dark blue -> teal -> yellow."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)
    x = np.clip(np.asarray(t, np.float64), 0, 1) * (len(stops) - 1)
    i = np.minimum(np.floor(x).astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return np.round(stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def _patch_map(values, patch_size, grid):
    """[N] per-patch values -> [H, W] by repeating each value over its patch."""
    return np.kron(np.asarray(values).reshape(grid, grid), np.ones((patch_size, patch_size)))


def reconstruction_grid(images, pred, mask, *, patch_size: int, norm_pix_loss: bool, gpa=None,
                        mask_at_progress=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        max_images: int = 4, upscale: int = 1) -> np.ndarray:
    """images float [B, H, W, 3] (normalised), pred [B, N, p*p*3], mask bool [B, N]
    (True = masked), gpa [B, N] in [0, 1] or None, mask_at_progress bool [B, N] or None.
    Returns uint8 [rows * H * upscale, cols * W * upscale, 3] (nearest-neighbour upscale)."""
    images = np.asarray(images, np.float32)
    pred, mask = np.asarray(pred, np.float32), np.asarray(mask, bool)
    b, h, w, c = images.shape
    if pred.shape != (b, (h // patch_size) * (w // patch_size), patch_size * patch_size * c):
        raise ValueError(f"pred shape {pred.shape} does not match images {images.shape} with patch {patch_size}")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask shape {mask.shape}, expected {pred.shape[:2]}")
    n = min(b, max_images)
    images, pred, mask = images[:n], pred[:n], mask[:n]
    target = np.asarray(patchify(images, patch_size))  # [n, N, p*p*3]
    if norm_pix_loss:  # back from per-patch normalised space, with the original patch stats
        mu = target.mean(-1, keepdims=True)
        sd = np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
        pred = pred * sd + mu
    grid = h // patch_size
    recon = np.asarray(unpatchify(pred, patch_size, c))
    pixel_mask = np.stack([_patch_map(m, patch_size, grid) for m in mask])[..., None] > 0  # [n, H, W, 1]
    original = denormalize(images, mean, std)
    cols = [original,
            np.where(pixel_mask, np.uint8(GREY), original),
            denormalize(recon, mean, std),
            np.where(pixel_mask, denormalize(recon, mean, std), original)]
    if gpa is not None:
        heat = np.stack([_viridis_like(_patch_map(g, patch_size, grid)) for g in np.asarray(gpa)[:n]])
        cols.append(np.round(0.6 * heat + 0.4 * original).astype(np.uint8))
    if mask_at_progress is not None:
        later = np.stack([_patch_map(m, patch_size, grid) for m in np.asarray(mask_at_progress)[:n]])[..., None] > 0
        cols.append(np.where(later, np.uint8(GREY), original))
    rows = [np.concatenate([col[i] for col in cols], axis=1) for i in range(n)]
    grid_img = np.concatenate(rows, axis=0)
    return grid_img.repeat(upscale, axis=0).repeat(upscale, axis=1)


def save_png(path: str, array: np.ndarray):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def plot_curves(metrics_path: str, out_png: str, keys=("loss", "pixel_loss", "gpa_loss", "lr"),
                panel=(320, 200)) -> None:
    """One small line-plot panel per key present in metrics.jsonl, side by side."""
    from mimjax.metrics import read_metrics

    rows = read_metrics(metrics_path)
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    pw, ph = panel
    img = Image.new("RGB", (pw * max(len(keys), 1), ph), "white")
    draw = ImageDraw.Draw(img)
    for j, key in enumerate(keys):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        x0, y0, x1, y1 = j * pw + 45, 20, (j + 1) * pw - 10, ph - 25
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 4), key, fill="black")
        steps, vals = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
        lo, hi = vals.min(), vals.max()
        draw.text((j * pw + 2, y0), f"{hi:.3g}", fill="black")
        draw.text((j * pw + 2, y1 - 10), f"{lo:.3g}", fill="black")
        draw.text((x0, y1 + 4), f"{int(steps.min())}", fill="black")
        draw.text((x1 - 40, y1 + 4), f"{int(steps.max())}", fill="black")
        sx = (steps - steps.min()) / max(steps.max() - steps.min(), 1e-12)
        sy = (vals - lo) / max(hi - lo, 1e-12)
        xy = [(x0 + 2 + u * (x1 - x0 - 4), y1 - 2 - v * (y1 - y0 - 4)) for u, v in zip(sx, sy)]
        if len(xy) > 1:
            draw.line(xy, fill=(31, 119, 180), width=2)
        elif xy:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=(31, 119, 180))
    save_png(out_png, np.asarray(img))
