"""PNGs a person looks at instead of numbers: reconstruction grids and training curves.
Host-side NumPy + PIL only (no matplotlib, nothing runs on the accelerator).

Grid geometry: one row per image, one column per view, every cell exactly the image size
(H x W, times `upscale`), no separators; cell (row i, column j) is
grid[i*H:(i+1)*H, j*W:(j+1)*W]. Columns, in order:
  0 original | 1 masked input (masked patches grey 128) | 2 reconstruction (every patch
  predicted) | 3 reconstruction pasted on the visible patches | 4 GPA heatmap (only when
  `gpa` is given) | last: the mask at another progress, grey (only when given; training draws
  it at `other_progress`, so it differs from the masked input's).
`with_titles` puts each column's name in a white band above (the PNGs people open), and
beside the GPA heatmap column its colour scale (`colorbar`, COLORBAR_PX wide);
`plot_curves` draws metrics.jsonl with matplotlib (axes, ticks, labels).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mimjax.data.augment import IMAGENET_MEAN, IMAGENET_STD, denormalize
from mimjax.models.mae import patchify, unpatchify  # MAE's layout; NumPy in, NumPy out

GREY = 128
HEAT_ALPHA = 0.6  # heatmap weight when blended over the image
HEATMAP_TITLE = "GPA heatmap"
COLORBAR_PX = 40  # the heatmap's colour scale: its width in the titled PNG
BAR_COLUMNS = slice(3, 13)  # the gradient's columns inside the colour scale


def _colormap_lut(stops, n=256):
    """Piecewise-linear colormap through `stops` (uint8 RGB) -> uint8 LUT [n, 3]."""
    stops = np.asarray(stops, np.float64)
    x = np.linspace(0, len(stops) - 1, n)
    i = np.minimum(np.floor(x).astype(int), len(stops) - 2)
    f = (x - i)[:, None]
    return np.round(stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


# Viridis-like: dark purple (g = 0) -> blue -> teal -> green -> yellow (g = 1).
VIRIDIS_LUT = _colormap_lut([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]])


def colormap(values):
    """values in [0, 1], any shape [...] -> uint8 [..., 3] (NaN shown as 0)."""
    v = np.nan_to_num(np.asarray(values, np.float64), nan=0.0)
    return VIRIDIS_LUT[np.round(np.clip(v, 0, 1) * 255).astype(int)]


def colorbar(height: int, width: int = 0, font_px: int = 10) -> np.ndarray:
    """The GPA heatmap's colour scale, uint8 [height, width (default COLORBAR_PX), 3]: white,
    with a vertical gradient in columns BAR_COLUMNS, row r coloured `colormap(1 - r / (height -
    1))` (score 1 at the top, 0 at the bottom), and the labels "1.0" at the top and "0.0" at the
    bottom to its right."""
    width = width or COLORBAR_PX
    if height < 2 * (font_px + 2) or width < BAR_COLUMNS.stop + 2:
        raise ValueError(f"colorbar of {height} x {width} px: too small for its labels")
    values = 1.0 - np.arange(height) / (height - 1)  # [height]: 1 at the top -> 0 at the bottom
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=font_px)
    x = BAR_COLUMNS.stop + 3
    draw.text((x, 0), "1.0", fill="black", font=font)
    draw.text((x, height - font_px - 2), "0.0", fill="black", font=font)
    out = np.asarray(out).copy()
    out[:, BAR_COLUMNS] = colormap(values)[:, None]
    return out


def other_progress(progress: float) -> float:
    """The progress of the last column's mask, for a snapshot at `progress`: the end of
    training (1.0) until the middle, then the start (0.0). At progress 1.0 the GPA mask at
    1.0 is the input's own mask, so a fixed 1.0 would repeat the "masked input" column."""
    return 1.0 if progress < 0.5 else 0.0


def _per_pixel(values, patch_size):
    """Per-patch values [B, N] -> [B, H, W] (each value repeated over its p x p patch)."""
    b, n = values.shape
    g = round(n ** 0.5)
    return values.reshape(b, g, g).repeat(patch_size, axis=1).repeat(patch_size, axis=2)


def reconstruction_grid(images, pred, mask, *, patch_size: int, norm_pix_loss: bool, gpa=None,
                        mask_at_progress=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        max_images: int = 4, upscale: int = 1) -> np.ndarray:
    """The MAE picture for the first `max_images` images, as uint8
    [rows * H * upscale, cols * W * upscale, 3] (geometry in the module docstring).

    images: float [B, H, W, 3], normalised with mean/std; H = W, divisible by patch_size.
    pred: float [B, N, p*p*3], the model's `pred` (per-patch normalised when
      norm_pix_loss: each patch is mapped back with the mean and unbiased std (+1e-6 inside
      the sqrt) of the same original patch, as MAE's visualisation does).
    mask: bool [B, N], True = masked. gpa: GPA scores [B, N] in [0, 1] or None.
    mask_at_progress: bool [B, N] or None, e.g. the GPA mask at another progress.
    upscale: integer nearest-neighbour magnification, for small images.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2] \
            or images.shape[1] % patch_size:
        raise ValueError(f"images shape {images.shape}: expected [B, H, H, 3] with H divisible by "
                         f"patch_size {patch_size}")
    b, h, _, c = images.shape
    n_patches = (h // patch_size) ** 2
    pred, mask = np.asarray(pred, np.float32), np.asarray(mask, bool)
    if pred.shape != (b, n_patches, patch_size * patch_size * c):
        raise ValueError(f"pred shape {pred.shape} does not match images {images.shape} with patch "
                         f"{patch_size}: expected {(b, n_patches, patch_size * patch_size * c)}")
    for name, arr in (("mask", mask), ("gpa", gpa), ("mask_at_progress", mask_at_progress)):
        if arr is not None and np.shape(arr) != (b, n_patches):
            raise ValueError(f"{name} shape {np.shape(arr)}, expected [B, N] = {(b, n_patches)}")
    if max_images < 1 or upscale < 1:
        raise ValueError(f"max_images ({max_images}) and upscale ({upscale}) must be >= 1")

    k = min(b, max_images)
    images, pred, mask = images[:k], pred[:k], mask[:k]
    if norm_pix_loss:  # back from per-patch normalised space, with the original patch stats
        target = np.asarray(patchify(images, patch_size))  # [k, N, p*p*3]
        mu = target.mean(-1, keepdims=True)
        sd = np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
        pred = pred * sd + mu
    original = denormalize(images, mean, std)  # uint8 [k, H, W, 3]
    recon = denormalize(np.asarray(unpatchify(pred, patch_size, c)), mean, std)
    masked = _per_pixel(mask, patch_size)[..., None]  # bool [k, H, W, 1]

    cols = [original, np.where(masked, np.uint8(GREY), original), recon, np.where(masked, recon, original)]
    if gpa is not None:
        heat = colormap(_per_pixel(np.asarray(gpa, np.float64)[:k], patch_size))
        cols.append(np.round(HEAT_ALPHA * heat + (1 - HEAT_ALPHA) * original).astype(np.uint8))
    if mask_at_progress is not None:
        other = _per_pixel(np.asarray(mask_at_progress, bool)[:k], patch_size)[..., None]
        cols.append(np.where(other, np.uint8(GREY), original))
    grid = np.concatenate([np.concatenate([col[i] for col in cols], axis=1) for i in range(k)], axis=0)
    return grid.repeat(upscale, axis=0).repeat(upscale, axis=1)


def column_titles(gpa: bool, mask_at: float | None = None, same_as_input: bool = False) -> list[str]:
    """The titles of `reconstruction_grid`'s columns, in order (mask_at: the progress of the
    last column's mask, when it is drawn; same_as_input: that mask is the input's, as with
    random masking, whose mask does not depend on the progress, and the title says so)."""
    titles = ["original", "masked input", "reconstruction", "recon. + visible"]
    if gpa:
        titles.append(HEATMAP_TITLE)
    if mask_at is not None:
        titles.append(f"mask at progress {mask_at:.2f}" + (" (= masked input)" if same_as_input else ""))
    return titles


def with_titles(grid: np.ndarray, titles: list[str], font_px: int = 12) -> np.ndarray:
    """uint8 grid [R*H, C*W, 3] -> [band + R*H, C*W (+ COLORBAR_PX), 3]: a white band on top
    with titles[j] centred over column j (wrapped onto two lines when a title is wider than its
    column); a "GPA heatmap" column gets its `colorbar` right beside it, below the band (the
    columns after it move right by COLORBAR_PX)."""
    grid = np.asarray(grid)
    cols = len(titles)
    if grid.dtype != np.uint8 or grid.ndim != 3 or grid.shape[1] % cols:
        raise ValueError(f"with_titles wants a uint8 [H, C*W, 3] grid with C = {cols} columns, got "
                         f"{grid.dtype} {grid.shape}")
    width = grid.shape[1] // cols
    font = ImageFont.load_default(size=font_px)
    lines = []
    for t in titles:
        words, wrapped = t.split(), [""]
        for w in words:  # greedy wrap into the column's width
            trial = f"{wrapped[-1]} {w}".strip()
            if wrapped[-1] and font.getlength(trial) > width - 4:
                wrapped.append(w)
            else:
                wrapped[-1] = trial
        lines.append(wrapped)
    line_h = font_px + 3
    band = Image.new("RGB", (grid.shape[1], 4 + line_h * max(len(w) for w in lines)), "white")
    draw = ImageDraw.Draw(band)
    for j, wrapped in enumerate(lines):
        for k, text in enumerate(wrapped):
            x = j * width + max(0, (width - font.getlength(text)) / 2)
            draw.text((x, 2 + k * line_h), text, fill="black", font=font)
    out = np.concatenate([np.asarray(band), grid], axis=0)
    if HEATMAP_TITLE not in titles:
        return out
    x = (titles.index(HEATMAP_TITLE) + 1) * width
    scale = np.full((out.shape[0], COLORBAR_PX, 3), 255, np.uint8)
    scale[band.height:] = colorbar(grid.shape[0])
    return np.concatenate([out[:, :x], scale, out[:, x:]], axis=1)


def save_png(path: str, array: np.ndarray):
    """Write uint8 [H, W, 3] (or [H, W]) as a PNG, creating parent directories; the file is
    written whole and never through a symbolic link (`mimjax.paths.write_bytes`)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"save_png wants uint8 [H, W] or [H, W, 3], got {array.dtype} {array.shape}")
    import io

    from mimjax import paths

    if not paths.is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    paths.write_bytes(path, buf.getvalue())


def plot_curves(metrics_path: str, out_png: str, keys=("loss", "pixel_loss", "gpa_loss", "lr", "knn_top1"),
                panel=(400, 300)) -> None:
    """Training curves from metrics.jsonl as a PNG, drawn with matplotlib (Agg): one panel
    (panel = (width, height) px) per key that has at least one finite value, side by side,
    each with its title, axes labelled "step" and the key, ticks and a grid; the PNG is
    [height, width * n_panels, 3] (one empty panel saying so if no key has data). A step
    logged twice (a run resumed from an older checkpoint) keeps its last value."""
    import matplotlib

    matplotlib.use("Agg")  # no display; before pyplot
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from mimjax.train.metrics import read_metrics

    rows = read_metrics(metrics_path)
    series = {}
    for key in keys:
        by_step = {int(r["step"]): float(r[key]) for r in rows
                   if isinstance(r.get(key), (int, float)) and "step" in r}
        if by_step:
            series[key] = sorted(by_step.items())
    pw, ph = panel
    dpi = 100
    fig, axes = plt.subplots(1, max(len(series), 1), figsize=(pw * max(len(series), 1) / dpi, ph / dpi),
                             dpi=dpi, squeeze=False)
    for ax, (key, pts) in zip(axes[0], series.items()):
        steps, vals = np.array(pts, np.float64).T
        ax.plot(steps, vals, color=CURVE_COLOR, linewidth=1.5, marker="o" if len(steps) == 1 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel(key, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.grid(True, alpha=0.3)
    if not series:
        axes[0][0].text(0.5, 0.5, f"no values of {', '.join(keys)} yet", ha="center", va="center", fontsize=9)
        axes[0][0].set_axis_off()
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # uint8 [ph, pw * n, 3]
    plt.close(fig)
    save_png(out_png, rgb)


CURVE_COLOR = (31 / 255, 119 / 255, 180 / 255)  # matplotlib's default blue, (31, 119, 180) in uint8
