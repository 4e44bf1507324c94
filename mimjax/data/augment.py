"""MAE image transforms in NumPy/PIL (host side, deterministic given a numpy Generator).

Pre-training (MAE's `transform_train`): RandomResizedCrop(size, scale=(0.2, 1.0),
ratio=(3/4, 4/3), bicubic) with torchvision's algorithm (10 tries, then a center crop),
horizontal flip with p = 0.5, /255 and ImageNet mean/std. Evaluation: resize the shorter
side to int(size / 0.875) (bicubic), center crop `size`, mean/std. PIL's resize is the
one torchvision calls for PIL images, so crops match torchvision pixel for pixel.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875  # 224 / 256


def crop_box(rng: np.random.Generator, height: int, width: int, scale=(0.2, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params -> (top, left, h, w): area fraction
    ~ U(scale), log aspect ~ U(log ratio); 10 tries, then a center crop of the whole image
    clamped to the ratio range."""
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


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator, scale=(0.2, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: crop `crop_box`, then bicubic resize (crop
    first, as torchvision does: PIL's resize(box=...) would filter across the box edge)."""
    top, left, h, w = crop_box(rng, image.shape[0], image.shape[1], scale, ratio)
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w]))
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def normalize(image_uint8: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 [..., 3] -> float32 [..., 3], (x / 255 - mean) / std."""
    x = image_uint8.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def denormalize(x, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """float [..., 3] normalised -> uint8 [..., 3] (rounded, clipped), for PNGs."""
    x = np.asarray(x, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def train_transform(image: np.ndarray, size: int, rng: np.random.Generator,
                    scale=(0.2, 1.0)) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3]: random resized crop, flip (p = 0.5),
    normalise. Draws from `rng` in a fixed order (crop, then flip)."""
    out = random_resized_crop(image, size, rng, scale)
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    return normalize(out)


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3]: shorter side to int(size / 0.875)
    (bicubic; the longer side scaled and truncated as torchvision's Resize), center crop."""
    h, w = image.shape[:2]
    short = int(size / EVAL_CROP_FRACTION)
    if h <= w:
        nh, nw = short, int(short * w / h)
    else:
        nh, nw = int(short * h / w), short
    im = Image.fromarray(image).resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))  # torchvision CenterCrop
    return normalize(np.asarray(im)[top:top + size, left:left + size])
