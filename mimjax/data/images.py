"""Encoded image bytes and PIL images of any mode -> uint8 RGB arrays: the one decoder of
the readers (mimjax/data/sources.py), the pipeline and `mimjax prepare imagenet --max_side`."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Any PIL image (RGB, RGBA, L, LA, P, CMYK, I;16, I, F, ...) -> uint8 [H, W, 3]."""
    im = ImageOps.exif_transpose(im)  # camera photos store their rotation in EXIF
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        # PIL's convert("RGB") clips these at 255 (a 16-bit image turns white): rescale.
        a = np.asarray(im, np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max() > 255):
            a = a / 257.0  # 16-bit range -> 8-bit
        elif im.mode == "F" and a.max() <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    return np.asarray(im.convert("RGB"))


def decode(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3]; raises (OSError, ValueError, ...) if unreadable,
    truncated included (PIL's LOAD_TRUNCATED_IMAGES stays off)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return to_rgb_uint8(im)
