"""MAE image transforms in NumPy/PIL (host side, deterministic given a numpy Generator).

Pre-training: RandomResizedCrop(size, scale=(0.2, 1.0), ratio=(3/4, 4/3), bicubic) as
torchvision computes it, horizontal flip with p = 0.5, ImageNet mean/std. Evaluation:
resize the shorter side to size / 0.875 (bicubic), center crop, mean/std.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_box(rng: np.random.Generator, height: int, width: int, scale=(0.2, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, h, w); 10 tries, then a
    center crop clamped to the ratio range."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def normalize(image_uint8: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [H, W, 3], (x / 255 - mean) / std."""
    x = image_uint8.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def denormalize(x, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """float [..., 3] normalised -> uint8 [..., 3] (clipped), for PNGs."""
    x = np.asarray(x, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def train_transform(image: np.ndarray, size: int, rng: np.random.Generator,
                    scale=(0.2, 1.0)) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3]: random resized crop, flip, normalise."""
    top, left, h, w = crop_box(rng, image.shape[0], image.shape[1], scale)
    crop = Image.fromarray(image).resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
    out = np.asarray(crop)
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    return normalize(out)


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3]: shorter side to size / 0.875, center crop."""
    h, w = image.shape[:2]
    short = int(round(size / 0.875))
    nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    im = Image.fromarray(image).resize((nw, nh), Image.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return normalize(np.asarray(im)[top:top + size, left:left + size])
